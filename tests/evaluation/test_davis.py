"""dinoseg.evaluation.davis against the davis2017-evaluation definitions (fixtures of
scripts/make_davis_fixtures.py: a transcription of the official code, see tests/fixtures/davis/README.md)."""
import pathlib

import numpy as np
import pytest

from dinoseg.evaluation import davis

FIXTURE = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "davis" / "davis_fixture.npz"


@pytest.fixture(scope="module")
def fx():
  return dict(np.load(FIXTURE))


def _sequences(fx):
  return sorted(k.split("/", 1)[1] for k in fx if k.startswith("gt/"))


def test_per_frame_j_f_equal_official(fx):
  assert len(_sequences(fx)) == 3
  for name in _sequences(fx):
    j, f = davis.evaluate_sequence(fx[f"gt/{name}"], fx[f"pred/{name}"])
    np.testing.assert_array_equal(j, fx[f"j/{name}"], err_msg=name)
    np.testing.assert_array_equal(f, fx[f"f/{name}"], err_msg=name)


def test_statistics_and_summary_equal_official(fx):
  ev = davis.DavisEvaluator()
  for name in _sequences(fx):
    j, f = ev.process(name, fx[f"gt/{name}"], fx[f"pred/{name}"])
    ours = np.asarray([[*davis.statistics(j[o]), *davis.statistics(f[o])] for o in range(len(j))])
    np.testing.assert_array_equal(ours, fx[f"stats/{name}"], err_msg=name)
  r = ev.result()
  ours = [r[k] for k in ("J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay")]
  np.testing.assert_allclose(ours, fx["summary"], rtol=0, atol=1e-15)
  assert r["num_objects"] == 5


def test_boundary_cases_equal_official(fx):
  names = [k.split("/", 2)[2] for k in fx if k.startswith("bound/fg/")]
  assert "both_empty" in names and "corner" in names
  for name in names:
    assert davis.boundary_measure(fx[f"bound/gt/{name}"], fx[f"bound/fg/{name}"]) == float(fx[f"bound/f/{name}"]), name
  one = ("bound/gt/one_pixel", "bound/fg/one_pixel")
  assert davis.boundary_measure(fx[one[0]], fx[one[1]], bound_th=3) == float(fx["bound/f/one_pixel_th3"])


def test_tolerance_and_simple_values():
  assert davis.boundary_tolerance((480, 854)) == 8.0  # DAVIS 480p: ceil(0.008 * 979.6)
  m = np.zeros((20, 20), bool)
  m[5:15, 5:15] = True
  assert davis.region_similarity(m, m) == 1.0 and davis.boundary_measure(m, m) == 1.0
  assert davis.region_similarity(m, ~m) == 0.0
  mean, recall, decay = davis.statistics(np.asarray([1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]))
  assert (mean, recall, decay) == (0.25, 0.25, 2 / 3)
  with pytest.raises(ValueError):
    davis.evaluate_sequence(np.zeros((1, 2, 4, 4)), np.zeros((1, 2, 4, 4)))
