"""The README's promises that can be checked without installing anything."""
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def command(marker: str) -> str:
    lines = (REPO / "README.md").read_text().splitlines()
    return lines[lines.index(f"<!-- {marker} -->") + 1].strip()


def test_ci_runs_the_readme_test_command():
    cmd = command("test-command")
    assert "pip install" in cmd and "-c constraints.txt" in cmd and "pytest" in cmd
    assert "test-command" in (REPO / ".ci" / "run").read_text()


def test_demo_command_installs_with_the_constraints():
    cmd = command("demo-command")
    assert "-c constraints.txt" in cmd and cmd.endswith("wit-build demo")


def test_constraints_pin_the_torch_pair():
    pins = (REPO / "constraints.txt").read_text()
    assert "torch==2.14.1" in pins and "torchvision==0.29.1" in pins
