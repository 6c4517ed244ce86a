"""``hf-compress export`` entry point: user errors exit 2 with one clear line, before any work."""

from __future__ import annotations

from hf_compress.release_cli import export_main


def test_existing_output_needs_overwrite(tmp_path, capsys):
    (tmp_path / "out").mkdir()
    assert export_main([str(tmp_path / "model"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hf-compress export: error:") and "--overwrite" in err


def test_fp32_only_without_keeping_fp32_is_refused(tmp_path, capsys):
    assert (
        export_main([str(tmp_path / "m"), str(tmp_path / "o"), "--quantize", "none", "--no-keep-fp32"]) == 2
    )
    assert "keep_fp32=False needs quantize='int8'" in capsys.readouterr().err


def test_bad_fp32_layer_regex(tmp_path, capsys):
    assert export_main([str(tmp_path / "m"), str(tmp_path / "o"), "--fp32-layer", "("]) == 2
    assert "not a regular expression" in capsys.readouterr().err
