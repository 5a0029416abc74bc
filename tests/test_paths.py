"""Safe file access: names resolve inside their folder or are refused; outputs never overwrite."""

import os

import pytest

from nodegraph.environment import ModelNotFound, ModelPaths
from nodegraph.paths import UnsafePath, list_files, safe_join, save_new_file


@pytest.mark.parametrize("name", ["../x.png", "a/../../x.png", "/etc/passwd", "C:\\x.png", "a\x00.png", "",
                                  "..\\x.png", "sub/../../etc"])
def test_escaping_names_are_refused(tmp_path, name):
    with pytest.raises(UnsafePath):
        safe_join(tmp_path, name)


def test_symlink_pointing_out_is_refused_and_not_listed(tmp_path):
    outside = tmp_path / "outside.safetensors"
    outside.write_bytes(b"x")
    root = tmp_path / "root"
    root.mkdir()
    (root / "inside.safetensors").write_bytes(b"y")
    os.symlink(outside, root / "link.safetensors")
    with pytest.raises(UnsafePath):
        safe_join(root, "link.safetensors")
    assert list_files(root, [".safetensors"]) == ["inside.safetensors"]
    assert safe_join(root, "sub/./x.png") == (root / "sub" / "x.png").resolve()


def test_save_new_file_never_overwrites_and_leaves_no_partial_files(tmp_path):
    first = save_new_file(tmp_path, "img", "png", b"one")
    (tmp_path / "img_00007_.png").write_bytes(b"user's file")
    second = save_new_file(tmp_path, "img", "png", b"two")
    nested = save_new_file(tmp_path, "faces/img", "png", b"three")
    assert (first.name, second.name) == ("img_00001_.png", "img_00008_.png")
    assert first.read_bytes() == b"one" and (tmp_path / "img_00007_.png").read_bytes() == b"user's file"
    assert nested == (tmp_path / "faces" / "img_00001_.png").resolve()
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".partial")]
    with pytest.raises(UnsafePath):
        save_new_file(tmp_path, "../img", "png", b"x")


def test_model_paths_list_builtins_first_and_refuse_escapes(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "b.safetensors").write_bytes(b"")
    (tmp_path / "checkpoints" / "notes.txt").write_text("")
    paths = ModelPaths(roots=[tmp_path])
    paths.add_builtin("checkpoints", "default.safetensors", tmp_path / "pkg.safetensors")
    assert paths.list("checkpoints") == ["default.safetensors", "b.safetensors"]
    assert paths.resolve("checkpoints", "b.safetensors") == (tmp_path / "checkpoints" / "b.safetensors").resolve()
    with pytest.raises(ModelNotFound, match="available: default.safetensors, b.safetensors"):
        paths.resolve("checkpoints", "v1-5-pruned-emaonly.safetensors")
    with pytest.raises(UnsafePath):
        paths.resolve("checkpoints", "../checkpoints/b.safetensors")


def test_partial_files_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    import subprocess
    import sys

    from nodegraph.paths import remove_stale_partials

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / "sub").mkdir()
    stale = tmp_path / "sub" / f".partial.{int(dead.stdout)}.abc.png"
    stale.write_bytes(b"\x89PNG half")
    live = tmp_path / f".partial.{os.getpid()}.def.png"
    live.write_bytes(b"\x89PNG being written")
    kept = [tmp_path / "ComfyUI_00001_.png", tmp_path / ".partial.notapid.png"]
    for path in kept:
        path.write_bytes(b"x")
    assert remove_stale_partials(tmp_path) == [stale]
    assert not stale.exists() and live.exists() and all(path.exists() for path in kept)


def test_output_prefixes_are_checked_before_a_run(tmp_path):
    """Reliability item 18: SaveImage's and SaveText's filename_prefix are refused at validation."""
    from types import SimpleNamespace

    from nodegraph.errors import ValidationFailed
    from nodegraph.paths import output_prefix_problem
    from nodegraph.registry import NodeRegistry
    from nodegraph.validation import compile_workflow
    from nodegraph.workflow import Link, NodeInstance, Workflow
    from nodes.image import SaveImage
    from nodes.utils import PrimitiveString, SaveText

    env = SimpleNamespace(output_dir=tmp_path / "output")
    env.output_dir.mkdir()
    (tmp_path / "outside").mkdir()
    (env.output_dir / "out").symlink_to(tmp_path / "outside")
    for prefix in ("../x", "/tmp/x", "C:\\x", "a/../../x", "a/../b", "out/x", "x\x00"):  # as save_new_file
        assert output_prefix_problem(prefix, env), prefix
    for prefix in ("ComfyUI", "sub/dir/x", ""):
        assert output_prefix_problem(prefix, env) is None, prefix
    assert output_prefix_problem("out/x", None) is None  # without a folder only the name itself is checked

    registry = NodeRegistry([SaveImage, SaveText, PrimitiveString])
    workflow = Workflow(nodes={"1": NodeInstance(type="PrimitiveString", widgets={"value": "hi"}),
                               "2": NodeInstance(type="SaveText", widgets={"filename_prefix": "../notes"})},
                        links=[Link(from_node="1", from_slot=0, to_node="2", to_input="text")])
    with pytest.raises(ValidationFailed) as failed:
        compile_workflow(workflow, registry, env)
    (issue,) = failed.value.issues
    assert (issue.node_id, issue.input_name, issue.type) == ("2", "filename_prefix", "custom_validation_failed")
    assert "'../notes' contains '..'" in str(issue)
    assert SaveImage.schema.input("filename_prefix").check is output_prefix_problem
