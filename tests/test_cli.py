"""The `unitok` command starts fast and reports user mistakes without tracebacks."""

import subprocess
import sys

from unitok.cli import COMMANDS, main


def test_help_lists_every_command_without_importing_heavy_libraries():
    code = (
        "import sys, contextlib, io\n"
        "from unitok.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        "    try: main(['--help'])\n"
        "    except SystemExit: pass\n"
        "heavy = [m for m in ('torch', 'transformers', 'diffusers', 'lightning') if m in sys.modules]\n"
        "print(out.getvalue()); print('HEAVY', heavy)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "HEAVY []" in result.stdout
    for name in COMMANDS:
        assert name in result.stdout


def test_user_errors_are_one_line_messages(tmp_path, capsys):
    assert main(["data", "shapes", "--out", str(tmp_path), "--num", "0"]) == 2
    err = capsys.readouterr().err
    assert "--num must be positive" in err and "Traceback" not in err
