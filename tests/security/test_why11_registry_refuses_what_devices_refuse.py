"""Why 11: the registry published artifacts no device would install (a file named `..\\evil.txt`, a subfolder)."""

from __future__ import annotations

import pytest

from fedready.errors import IntegrityError
from fedready.registry import Registry
from tests.security.conftest import assert_one_line_error, cli, copy_artifact, resign


@pytest.mark.parametrize(("name", "words"), [("..\\evil.txt", "is not allowed in an artifact"),
                                             ("notes/readme.txt", "'notes' is a folder")])  # fmt: skip
def test_operator_signed_artifact_with_a_layout_devices_refuse_is_not_published(tmp_path, artifact, keys, name, words):
    odd = copy_artifact(artifact, tmp_path / "1.0.0")
    (odd / name).parent.mkdir(parents=True, exist_ok=True)
    (odd / name).write_text("payload")
    resign(odd, keys["operator"][0])  # signed by the operator: the signature alone would let it through
    reg = Registry.init(tmp_path / "registry")
    with pytest.raises(IntegrityError, match=words.replace("'", ".")):
        reg.publish(odd, public_key=keys["operator"][1])
    code, out = cli("registry", "publish", reg.path, odd, "--public-key", keys["operator"][1])
    assert_one_line_error(code, out, expect=words)
    assert reg.versions() == [] and not (reg.targets_dir / "artifacts").exists()
    assert [e for e in (reg.path / "audit.jsonl").read_text().splitlines() if '"publish"' in e] == []
    code, out = cli("verify", odd, "--public-key", keys["operator"][1])
    assert_one_line_error(code, out, expect=words)
