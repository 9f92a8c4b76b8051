"""Spec validation: unknown keys and unphysical values are rejected with one line naming the field."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from hrtem_dataset.errors import InputError
from hrtem_dataset.specs import (
    Choice,
    DatasetSpec,
    IntRange,
    ParticleSpec,
    SceneSpec,
    SimulationSpec,
    StructureDistributionSpec,
    Uniform,
    load_spec,
    sample_param,
    validate_spec,
)


def _one_line_error(data, cls) -> str:
    with pytest.raises(InputError) as exc:
        validate_spec(data, cls, "spec.yaml")
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith("spec.yaml: ")
    return msg


SCENE = {"cell": {"x": 64.0, "y": 64.0}, "substrate": {"thickness": 30.0},
         "particles": [{"material": "Au", "radius": 20.0, "twins": 1}]}


def test_scene_spec_defaults_and_contract_example():
    spec = validate_spec(SCENE, SceneSpec)
    p = spec.particles[0]
    assert (p.shape, p.orientation, p.position, p.stacking_faults) == ("sphere", "random", "center", 0)
    assert spec.substrate.density == 2.0 and spec.substrate.min_distance == 1.4 and spec.vacuum == 10.0
    spec = load_spec("configs/structures/example-scene.yaml", SceneSpec)
    assert [q.shape for q in spec.particles] == ["sphere", "wulff"] and spec.particles[1].orientation == "[110]"


@pytest.mark.parametrize("patch,field", [
    ({"bogus": 1}, "bogus"),
    ({"cell": {"x": -5.0, "y": 64.0}}, "cell.x"),
    ({"substrate": {"thickness": 30.0, "density": 9.0}}, "substrate.density"),
    ({"substrate": {"thickness": 30.0, "kind": "graphene"}}, "substrate.kind"),
    ({"particles": [{"material": "Au", "radius": 1.0}]}, "particles.0.radius"),
    ({"particles": [{"material": "Au", "radius": 20.0, "shape": "cube"}]}, "particles.0.shape"),
    ({"particles": [{"material": "Au", "radius": 20.0, "orientation": "[11]"}]}, "particles.0.orientation"),
    ({"particles": [{"material": "Au", "radius": 20.0, "twins": -1}]}, "particles.0.twins"),
    ({"particles": [{"material": "Au", "radius": 20.0, "colour": "red"}]}, "particles.0.colour"),
    ({"particles": [{"material": "Au", "radius": 20.0, "twins": 2, "twin_planes": [0]}]}, "twin_planes"),
    ({"particles": [{"material": "Au", "radius": 20.0, "shape": "icosahedron", "twins": 1}]}, "multiply twinned"),
    ({"vacuum": -1.0}, "vacuum"),
    ({"embed": 100.0}, "embed"),
])
def test_scene_spec_rejections_name_the_field(patch, field):
    data = {**SCENE, **patch}
    assert field in _one_line_error(data, SceneSpec)


@pytest.mark.parametrize("orientation,uvw", [("[110]", (1, 1, 0)), ("[1,1,0]", (1, 1, 0)), ("[-1 1 2]", (-1, 1, 2)),
                                             (" [001] ", (0, 0, 1)), ("[-112]", (-1, 1, 2)), ("[10, 0, 1]", (10, 0, 1))])
def test_orientation_forms_put_that_direction_along_the_beam(orientation, uvw):
    """Every accepted zone-axis spelling puts the same crystal direction [uvw] along the beam (lab z)."""
    from hrtem_dataset.structures import build_particle

    spec = ParticleSpec(material="Au", radius=6.0, orientation=orientation)
    assert spec.orientation == orientation.strip()
    _, _, rec = build_particle(spec, np.random.default_rng(0))
    beam = np.array(rec["rotation"]) @ (np.array(uvw, float) / np.linalg.norm(uvw))  # fcc: [uvw] is cubic
    assert beam == pytest.approx([0.0, 0.0, 1.0], abs=1e-9)
    assert ParticleSpec(material="Au", radius=6.0, orientation="random").orientation == "random"


def test_distribution_spec_paper_config_and_defaults():
    dist = load_spec("configs/structures/paper.yaml", StructureDistributionSpec)
    assert (dist.n_particles.min, dist.n_particles.max) == (1, 5)
    assert dist.particles.radius.bounds == (10.0, 35.0)
    assert (dist.particles.defects.min, dist.particles.defects.max) == (0, 2)
    assert dist.min_separation == 10.0 and (dist.cell.x, dist.cell.y) == (128.0, 128.0)
    assert dist.substrate_thickness.bounds == (20.0, 80.0)
    default = StructureDistributionSpec()
    assert default.particles.materials.values == ["Au"]


@pytest.mark.parametrize("data,field", [
    ({"n_particles": {"min": 3, "max": 1}}, "n_particles"),
    ({"particles": {"shapes": {"values": ["sphere", "blob"]}}}, "particles.shapes"),
    ({"particles": {"orientation": {"values": ["random", "up"]}}}, "particles.orientation"),
    ({"particles": {"radius": {"min": 30, "max": 10}}}, "particles.radius"),
    ({"particles": {"materials": {"values": ["Au", "Ag"], "weights": [1.0]}}}, "particles.materials"),
    ({"particles": {"twins": {"min": -1, "max": 1}}}, "particles.twins"),
    ({"unknown_field": 3}, "unknown_field"),
])
def test_distribution_rejections_name_the_field(data, field):
    assert field in _one_line_error(data, StructureDistributionSpec)


def test_parameter_distributions_sample_within_bounds():
    rng = np.random.default_rng(0)
    u = Uniform(min=2.0, max=5.0)
    xs = np.array([u.sample(rng) for _ in range(2000)])
    assert xs.min() >= 2.0 and xs.max() <= 5.0 and abs(xs.mean() - 3.5) < 0.1
    lu = Uniform(min=1.0, max=100.0, log=True)
    ls = np.log10([lu.sample(rng) for _ in range(2000)])
    assert abs(ls.mean() - 1.0) < 0.05                      # log-uniform: uniform in log10
    c = Choice(values=["a", "b"], weights=[3.0, 1.0])
    frac_a = np.mean([c.sample(rng) == "a" for _ in range(4000)])
    assert abs(frac_a - 0.75) < 0.03
    ir = IntRange(min=0, max=2)
    assert set(ir.sample(rng) for _ in range(200)) == {0, 1, 2}
    assert sample_param(7.5, rng) == 7.5
    with pytest.raises(ValidationError):
        Uniform(min=-1.0, max=1.0, log=True)
    with pytest.raises(ValidationError):
        Choice(values=[1, 2], weights=[0.0, 0.0])


def test_load_spec_file_errors(tmp_path):
    with pytest.raises(InputError, match="missing.yaml: file not found"):
        load_spec(tmp_path / "missing.yaml", SceneSpec)
    bad = tmp_path / "bad.yaml"
    bad.write_text("cell: {x: 1\n")
    with pytest.raises(InputError, match=r"bad.yaml: malformed YAML"):
        load_spec(bad, SceneSpec)
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    with pytest.raises(InputError, match="mapping"):
        load_spec(lst, SceneSpec)


def test_dataset_spec_embeds_structures_and_rejects_bad_values():
    spec = validate_spec({"name": "hrtem-au", "structures": {"n_particles": {"min": 1, "max": 2}}}, DatasetSpec)
    assert isinstance(spec.structures, StructureDistributionSpec) and spec.structures.n_particles.max == 2
    assert "version" in _one_line_error({"name": "x", "version": "1.0"}, DatasetSpec)
    assert "name" in _one_line_error({"name": "Bad Name"}, DatasetSpec)
    assert "structures.cell.y" in _one_line_error({"name": "x", "structures": {"cell": {"x": 10, "y": 0}}}, DatasetSpec)
    assert "energy" in _one_line_error({"energy": 1.0}, SimulationSpec)
    msg = _one_line_error({"name": "x", "simulation": {"engine": "abtem", "antialias_transmission": False}}, DatasetSpec)
    assert "simulation" in msg and "antialias_transmission: abtem always band-limits" in msg
    assert "prismatic never" in _one_line_error({"engine": "prismatic", "antialias_transmission": True}, SimulationSpec)
    assert spec.hash() == validate_spec({"name": "hrtem-au", "structures": {"n_particles": {"min": 1, "max": 2}}},
                                        DatasetSpec).hash()


@pytest.mark.parametrize("data,field", [
    ({"particles": {"radius": {"min": 1.0, "max": 10.0}}}, "particles.radius"),
    ({"substrate_thickness": {"min": -5.0, "max": 10.0}}, "substrate_thickness"),
    ({"substrate_density": {"values": [2.0, 9.0]}}, "substrate_density"),
    ({"particles": {"defects": {"min": 2, "max": 0}}}, "particles.defects"),
    ({"particles": {"twin_fraction": 1.5}}, "particles.twin_fraction"),
])
def test_distribution_physical_ranges(data, field):
    assert field in _one_line_error(data, StructureDistributionSpec)


@pytest.mark.parametrize("bad,field", [
    ({"cell": {"x": True, "y": 64.0}}, "cell: x"),
    ({"cell": {"x": 64.0, "y": 64.0}, "vacuum": float("inf")}, "vacuum"),
    ({"cell": {"x": 64.0, "y": 64.0}, "particles": [{"material": "Au", "radius": 10.0, "tilt_mrad": float("nan")}]},
     "particles.0.tilt_mrad"),
])
def test_nan_inf_and_booleans_are_not_numbers(bad, field):
    from hrtem_dataset.specs import SceneSpec

    with pytest.raises(InputError, match=field):
        validate_spec(bad, SceneSpec)


@pytest.mark.parametrize("bad,field", [
    ({"name": "x", "seed": 2**70}, "seed"),
    ({"name": "x", "structures": {"particles": {"orientation": {"values": ["[99999999999999999999 1 0]"]}}}},
     "orientation"),
    ({"name": "x", "structures": {"particles": {"orientation": {"values": ["[0 0 0]"]}}}}, "orientation"),
])
def test_out_of_range_seeds_and_zone_axes_rejected(bad, field):
    with pytest.raises(InputError, match=field):
        validate_spec(bad, DatasetSpec)


def test_publish_revision_tag_is_a_plain_name(tmp_path):
    from hrtem_dataset.dataset.publish import publish

    for tag in ("../../x", "a/b", ".hidden", ""):
        with pytest.raises(InputError, match="--revision"):
            publish(tmp_path, "org/name", revision=tag, dry_run=True)


def test_pixel_size_finer_than_the_sampling_is_rejected():
    """Images are Fourier-cropped from the exit waves, never interpolated up: an output (or detector) pixel
    finer than the simulation sampling is refused with one line naming both fields; equal is fine."""
    base = {"name": "x", "simulation": {"sampling": 0.2}}
    msg = _one_line_error({**base, "imaging": {"pixel_size": 0.1}}, DatasetSpec)
    assert "imaging.pixel_size (0.1 Å) is finer than simulation.sampling (0.2 Å)" in msg
    msg = _one_line_error({**base, "imaging": {"pixel_size": 0.4, "recorded_pixel_size": {"values": [0.15, 0.4]}}},
                          DatasetSpec)
    assert "imaging.recorded_pixel_size (0.15 Å) is finer than simulation.sampling (0.2 Å)" in msg
    assert validate_spec({**base, "imaging": {"pixel_size": 0.2, "recorded_pixel_size": {"min": 0.2, "max": 0.5}}},
                         DatasetSpec).imaging.pixel_size == 0.2


def test_min_particle_area_is_an_operating_point_not_a_training_setting():
    """``model.min_particle_area`` (Å², default 25): bounds checked naming the field; the default leaves spec
    hashes as they were and no value changes the model fingerprint (it is not trained)."""
    from hrtem_dataset.seeding import spec_hash
    from hrtem_dataset.specs import DEFAULT_MIN_PARTICLE_AREA, ModelTrainingSpec, load_spec
    from hrtem_dataset.workspace import model_fingerprint_from

    assert ModelTrainingSpec().min_particle_area == DEFAULT_MIN_PARTICLE_AREA == 25.0
    assert "min_particle_area" not in ModelTrainingSpec().model_dump(mode="json")
    for bad in (-1.0, float("nan"), 1e7):
        with pytest.raises(ValidationError, match="min_particle_area"):
            ModelTrainingSpec(min_particle_area=bad)
    spec = load_spec("configs/au-baseline-cpu.yaml", DatasetSpec)
    other = spec.model_copy(update={"model": spec.model.model_copy(update={"min_particle_area": 0.0})})
    same = spec.model_copy(update={"model": spec.model.model_copy(update={"min_particle_area": 25.0})})
    assert spec_hash(same.model_dump(mode="json")) == spec_hash(spec.model_dump(mode="json"))
    assert model_fingerprint_from(other, "images") == model_fingerprint_from(spec, "images")
