"""Why 8: files model-signing skips (.gitattributes, .gitignore, .git/*, .github/*) passed `verify`, then `publish`."""

from __future__ import annotations

import pytest

from fedready.errors import IntegrityError
from fedready.registry import EdgeAgent, Registry, verify_artifact
from tests.security.conftest import assert_one_line_error, cli, copy_artifact

GIT_PATHS = [".gitattributes", ".gitignore", ".git/config", ".github/workflows/deploy.yml"]


@pytest.mark.parametrize("name", GIT_PATHS)
def test_files_hidden_from_the_signature_are_refused_by_verify_publish_and_install(tmp_path, artifact, keys, name):
    smuggled = copy_artifact(artifact, tmp_path / "1.0.0")
    (smuggled / name).parent.mkdir(parents=True, exist_ok=True)
    (smuggled / name).write_text("* filter=evil\n")
    with pytest.raises(IntegrityError, match="refused"):
        verify_artifact(smuggled, public_key=keys["operator"][1])
    code, out = cli("verify", smuggled, "--public-key", keys["operator"][1])
    top = name.split("/")[0]
    assert_one_line_error(code, out, expect=f"'{top}'")
    reg = Registry.init(tmp_path / "registry")
    code, out = cli("registry", "publish", reg.path, smuggled, "--public-key", keys["operator"][1])
    assert_one_line_error(code, out, expect=f"'{top}'")
    assert reg.versions() == [] and not list(reg.targets_dir.rglob(top))
    with pytest.raises(IntegrityError):
        EdgeAgent(tmp_path / "device").install(smuggled, public_key=keys["operator"][1])
    assert not (tmp_path / "device" / "models" / "1.0.0").exists()
