"""scripts/memory_maskdino_step.py: reading XLA's buffer-assignment dump."""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "scripts"))

import memory_maskdino_step  # noqa: E402

DUMP = """BufferAssignment:
allocation 0: size 104857600, parameter 1412, shape |u8[1,100,1024,1024]| at ShapeIndex {}:
 value: <163615 batch__masks__.1 @0> (size=104857600,offset=0): u8[1,100,1024,1024]{3,2,1,0}
allocation 1: size 64, thread-local:
 value: <12 add.3 @0> (size=64,offset=0): f32[16]{0}
allocation 2: size 2097152000, preallocated-temp:
 value: <200 fusion.7 @0> (size=1048576000,offset=0): f32[10,1,400,256,256]{4,3,2,1,0}
 value: <201 dot.2{} @0> (size=104857600,offset=1048576000): f32[400,65536]{1,0}
allocation 3: size 4, output shape is |f32[]|, maybe-live-out:
 value: <300 reduce.1 @0> (size=4,offset=0): f32[]
"""


def test_only_the_temporary_allocation_is_read():
  values = memory_maskdino_step.temp_values(DUMP)
  assert values == [("fusion.7", 1048576000, "f32[10,1,400,256,256]{4,3,2,1,0}"),
                    ("dot.2", 104857600, "f32[400,65536]{1,0}")]
