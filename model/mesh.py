"""The one mesh description and parser shared by every entry point.

Training takes it as `--config.mesh.AXIS=N`; decoding, export and the experiments take
`--mesh=data=1,tensor=2`. Both end in a `MeshConfig`, built into a device mesh by
`model.sharding.make_mesh`.
"""

import dataclasses

from model.sharding import MESH_AXES


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """Device mesh sizes; one axis may be -1, meaning the rest of the devices."""
  data: int = -1
  fsdp: int = 1
  tensor: int = 1
  expert: int = 1

  def as_dict(self) -> dict:
    return dataclasses.asdict(self)


def parse_mesh(text: str) -> MeshConfig | None:
  """'data=1,tensor=2' -> MeshConfig (unnamed axes 1, data -1 unless given); '' -> None."""
  if not text:
    return None
  sizes = {}
  for part in text.split(","):
    name, _, value = part.strip().partition("=")
    if name not in MESH_AXES or not value.lstrip("-").isdigit():
      raise ValueError(f"bad --mesh entry {part!r}; use AXIS=N with AXIS in {MESH_AXES}, "
                       "e.g. --mesh=data=1,tensor=2")
    if name in sizes:
      raise ValueError(f"--mesh names axis {name!r} twice")
    sizes[name] = int(value)
  defaults = {axis: 1 for axis in MESH_AXES}
  if "data" not in sizes and -1 not in sizes.values():
    defaults["data"] = -1
  return MeshConfig(**{**defaults, **sizes})
