"""`epp migrate` through the `epp` command: stdout and --out, --step, --check and exit codes, option errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from epp.cli import main
from epp.migrate.cli import STEPS
from tests.deploy.validation import object_errors

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "migrate"
GUIDE = FIXTURES / "guide"
RENAME = ["--rename-pool", "vllm-llama3-8b-instruct-preview=vllm-llama3-8b-instruct-ga"]
SERVICE = ["--epp-service", "vllm-llama3-8b-instruct-ga=vllm-llama3-8b-instruct-ga-epp"]


def documents(text: str) -> list[dict[str, object]]:
    return [d for d in yaml.safe_load_all(text) if d]


def test_stdout_holds_the_three_steps_in_order(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["migrate", *RENAME, *SERVICE, str(GUIDE / "preview-stack.yaml")]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert [(d["kind"], d["metadata"]["name"]) for d in documents(out)] == [  # type: ignore[index]
        ("InferencePool", "vllm-llama3-8b-instruct-ga"),
        ("InferenceObjective", "food-review"),
        ("InferenceObjective", "base-model"),
        ("HTTPRoute", "llm-route"),
        ("HTTPRoute", "llm-route"),
    ]
    assert out.index("# Step 1") < out.index("# Step 2") < out.index("# Step 3")


def test_step_prints_one_step(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["migrate", *RENAME, *SERVICE, "--step", "3", str(GUIDE / "preview-stack.yaml")]) == 0
    out = capsys.readouterr().out
    assert documents(out) == documents((GUIDE / "expected-httproute-v1.yaml").read_text())
    assert out.startswith("# Step 3")


def test_out_writes_one_file_per_step(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_dir = tmp_path / "migration"
    assert main(["migrate", *RENAME, *SERVICE, "--out", str(out_dir), str(GUIDE / "preview-stack.yaml")]) == 0
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(name for name, _ in STEPS)
    step1 = documents((out_dir / "step1-v1-resources.yaml").read_text())
    assert [d for d in step1 if d["kind"] == "InferenceObjective"] == documents(
        (GUIDE / "expected-objectives.yaml").read_text()
    )
    assert documents((out_dir / "step2-httproute-split.yaml").read_text()) == documents(
        (GUIDE / "expected-httproute-split.yaml").read_text()
    )
    assert documents((out_dir / "step3-httproute-v1.yaml").read_text()) == documents(
        (GUIDE / "expected-httproute-v1.yaml").read_text()
    )
    for path in out_dir.iterdir():
        for obj in documents(path.read_text()):
            assert object_errors(obj) == []
    assert f"wrote {out_dir / 'step1-v1-resources.yaml'} (3 objects)" in capsys.readouterr().err


def test_check_lists_every_v1alpha2_use_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["migrate", "--check", str(GUIDE / "preview-stack.yaml")]) == 1
    out, err = capsys.readouterr()
    stack = GUIDE / "preview-stack.yaml"
    assert out.splitlines() == [
        f"{stack}:2: InferencePool vllm-llama3-8b-instruct-preview: inference.networking.x-k8s.io/v1alpha2 "
        "InferencePool; convert it to inference.networking.k8s.io/v1",
        f"{stack}:13: InferenceModel food-review: InferenceModel; replaced by InferenceObjective (priority) and "
        "InferenceModelRewrite (targetModels)",
        f"{stack}:23: InferenceModel base-model: InferenceModel; replaced by InferenceObjective (priority) and "
        "InferenceModelRewrite (targetModels)",
        f"{stack}:33: HTTPRoute llm-route: spec.rules[0].backendRefs[0] routes to the v1alpha2 InferencePool "
        "'vllm-llama3-8b-instruct-preview'",
    ]
    assert "4 v1alpha2 use(s) left" in err


def test_check_passes_on_the_migrated_stack(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["migrate", *RENAME, *SERVICE, "--out", str(tmp_path), str(GUIDE / "preview-stack.yaml")]) == 0
    (tmp_path / "step2-httproute-split.yaml").unlink()  # step 2 is superseded by step 3
    capsys.readouterr()
    assert main(["migrate", "--check", str(tmp_path)]) == 0
    assert capsys.readouterr().out == "no v1alpha2 inference API in use (4 objects checked)\n"


def test_check_finds_epps_and_crds_of_the_preview_api(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "epp.yaml").write_text(
        """
apiVersion: apps/v1
kind: Deployment
metadata: {name: old-epp, namespace: llm}
spec:
  selector: {matchLabels: {app: e}}
  template:
    metadata: {labels: {app: e}}
    spec:
      containers:
      - name: epp
        args: [--pool-name, p, --pool-group, inference.networking.x-k8s.io]
      - name: ancient
        args: [-poolName, p]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: new-epp}
spec:
  selector: {matchLabels: {app: e}}
  template:
    metadata: {labels: {app: e}}
    spec:
      containers: [{name: epp, args: [--pool-name=p, --pool-group=inference.networking.k8s.io]}]
"""
    )
    assert main(["migrate", "--check", str(tmp_path), str(Path(__file__).resolve().parents[3] / "deploy/crds")]) == 1
    out = capsys.readouterr().out
    assert "Deployment llm/old-epp: container 'epp' runs an EPP with --pool-group inference.networking.x-k8s.io" in out
    assert "container 'ancient' passes -poolName: an EPP release before v1.0" in out
    assert "new-epp" not in out
    assert (
        "CustomResourceDefinition inferencemodels.inference.networking.x-k8s.io: CRD of the InferenceModel API" in out
    )
    assert "inferenceobjectives" not in out  # InferenceObjective is current


def test_bad_input_exits_2_with_the_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["migrate", str(FIXTURES / "malformed" / "bad-fields.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.count("error: ") == 5
    assert main(["migrate", "--check", str(FIXTURES / "malformed")]) == 2
    assert "invalid YAML at line 16" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rename-pool", "old"], "--rename-pool 'old': use OLD=NEW"),
        (["--priority", "Urgent=3"], "criticality must be one of Critical, Standard, Sheddable"),
        (["--priority", "Critical=high"], "the priority must be an integer"),
        (["--v1-weight", "100"], "percentage 100 is not in 1..99"),
        (["--step", "4"], "invalid choice: 4"),
    ],
)
def test_option_errors(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["migrate", *args, str(GUIDE)])
    assert caught.value.code == 2
    assert message in capsys.readouterr().err


def test_nothing_to_migrate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "cm.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n")
    assert main(["migrate", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert out == "" and "nothing to migrate" in err


def test_without_routes_the_steps_2_and_3_are_explained(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stack = (GUIDE / "preview-stack.yaml").read_text().split("---\napiVersion: gateway")[0]
    (tmp_path / "stack.yaml").write_text(stack)
    assert main(["migrate", *RENAME, *SERVICE, str(tmp_path)]) == 0
    assert "no HTTPRoute routes to a v1alpha2 InferencePool" in capsys.readouterr().err
