"""``distill_main`` (the ``hf-compress distill`` entry) and local data loading."""

from __future__ import annotations

import pytest
import yaml

from hf_compress.distill.cli_entry import DistillScriptArguments, distill_main, load_local_dataset
from tests.distill.conftest import make_llama, make_tokenizer


@pytest.fixture
def saved_pair(tmp_path):
    tok = make_tokenizer()
    paths = {}
    for name, model in (("student", make_llama(2, 32, seed=1)), ("teacher", make_llama(3, 48, seed=2))):
        paths[name] = tmp_path / name
        model.save_pretrained(paths[name])
        tok.save_pretrained(paths[name])
    return paths


def test_load_local_files(tmp_path):
    (tmp_path / "a.txt").write_text("w1 w2\n\n w3 \n")
    assert load_local_dataset(str(tmp_path / "a.txt"))["text"] == ["w1 w2", " w3 "]
    (tmp_path / "b.tsv").write_text("sentence\tlabel\nw1 w2\t1\nw3\t0\n")
    data = load_local_dataset(str(tmp_path / "b.tsv"), max_rows=1)
    assert data.column_names == ["sentence", "label"] and len(data) == 1
    with pytest.raises(ValueError, match="unsupported data file"):
        (tmp_path / "c.xml").write_text("x")
        load_local_dataset(str(tmp_path / "c.xml"))


def test_distill_main_with_yaml_and_flags(tmp_path, saved_pair):
    text = "\n".join(" ".join(f"w{(i * 7 + j) % 60}" for j in range(8)) for i in range(12))
    (tmp_path / "train.txt").write_text(text)
    config = {
        "loss": "jsd",
        "beta": 0.3,
        "temperature": 2.0,
        "max_steps": 5,
        "per_device_train_batch_size": 4,
        "bf16": False,
        "use_cpu": True,
        "report_to": [],
        "save_strategy": "no",
        "gradient_checkpointing": False,
    }
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "out"
    trainer = distill_main(
        [
            "--config", str(tmp_path / "cfg.yaml"), "--model_name_or_path", str(saved_pair["student"]),
            "--teacher_model_name_or_path", str(saved_pair["teacher"]), "--dataset", str(tmp_path / "train.txt"),
            "--output_dir", str(out), "--max_steps", "2",
        ]
    )  # fmt: skip
    assert trainer.args.loss == "jsd" and trainer.args.beta == 0.3 and trainer.state.global_step == 2
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    assert not (out / ".final.tmp").exists()


def test_script_arguments_are_checked():
    with pytest.raises(ValueError, match="exactly one of"):
        DistillScriptArguments(model_name_or_path="s", dataset="d")
    with pytest.raises(ValueError, match="task='seq2seq' is invalid"):
        DistillScriptArguments(
            model_name_or_path="s", teacher_model_name_or_path="t", dataset="d", task="seq2seq"
        )
