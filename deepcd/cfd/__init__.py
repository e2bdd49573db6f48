"""deepcd for fluid codes: the pressure projection on a MAC grid and a small smoke simulator."""

from deepcd.cfd.projection import Projector, project

__all__ = ["Projector", "project"]
