"""The simulated node's "shell": sshd's ForceCommand for every simulated node.

sshd runs `python -I -m gpumedic.sim.node_agent STATE_FILE` for each exec and puts the
client's command line in SSH_ORIGINAL_COMMAND. This understands the small sh subset the
collectors send (`;`-separated commands, `2>&1`, `echo` with `$?`) and answers the
tools a GPU node has (nvidia-smi, journalctl -k, dmesg, dcgmi, reboot) from the node's
state file. Imports are kept to the standard library: it starts once per SSH exec.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from gpumedic.sim import node_actions, node_render, node_state

Result = tuple[str, int]


class NodeRebooting(Exception):
    """The node is going down: the connection drops with no output, as on a real reboot."""


def _nvidia_smi(state: dict[str, Any], args: list[str], path: Path) -> Result:
    if "nvidia-smi" in state["garbled"]:
        # A wedged driver can print anything and still exit 0: the collector must not trust it.
        return "\x00\x17NVRM?? rc=-1 \ufffd\ufffd 3b:00 ERR!\n[N/A], [N/A], 0x?\n", 0
    if args[:1] == ["nvlink"]:
        if any(a in ("-s", "--status") for a in args[1:]):
            return node_render.render_nvlink_status(state)
        if any(a in ("-e", "--error-counters") for a in args[1:]):
            return node_render.render_nvlink_errors(state)
        return "nvlink: unsupported option in the simulator\n", 2
    opts = _options(args)
    if "--gpu-reset" in opts or "-r" in opts:
        return node_actions.gpu_reset(path, opts.get("-i") or opts.get("--id"))
    if "--query-gpu" in opts:
        fmt = (opts.get("--format") or "").split(",")
        if "csv" not in fmt:
            return "--format must be csv\n", 2
        fields = [f.strip() for f in (opts["--query-gpu"] or "").split(",") if f.strip()]
        return node_render.render_query_gpu(state, fields, header="noheader" not in fmt, units="nounits" not in fmt)
    if "-q" in opts or "--query" in opts:
        sections = (opts.get("-d") or opts.get("--display") or "").split(",")
        return node_render.render_q(state, [s for s in sections if s])
    return "simulated nvidia-smi: unsupported arguments: " + shlex.join(args) + "\n", 2


def _options(args: list[str]) -> dict[str, str | None]:
    """`--a=b`, `-i 3`, `-q` -> {"--a": "b", "-i": "3", "-q": None}."""
    opts: dict[str, str | None] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--") and "=" in arg:
            key, value = arg.split("=", 1)
            opts[key] = value
        elif arg in ("-i", "--id", "-d", "--display", "--since", "-o", "--format", "-r", "-g"):
            opts[arg] = args[i + 1] if i + 1 < len(args) else None
            i += 1
        else:
            opts[arg] = None
        i += 1
    return opts


def _journalctl(state: dict[str, Any], args: list[str]) -> Result:
    opts = _options(args)
    if "-k" not in opts and "--dmesg" not in opts:
        return "simulated journalctl: only -k is available\n", 1
    since = opts.get("--since")
    since_epoch = float(since[1:]) if since and since.startswith("@") else None
    return node_render.render_kernel_log(state, since_epoch)


def run_command(argv: list[str], path: Path) -> Result:
    state = node_state.load(path)
    if state.get("rebooting_until", 0) > time.time():
        raise NodeRebooting
    name, args = argv[0], argv[1:]
    if name == "nvidia-smi":
        return _nvidia_smi(state, args, path)
    if name == "journalctl":
        return _journalctl(state, args)
    if name == "dcgmi":
        return node_actions.dcgmi(path, args)
    if name in ("reboot", "systemctl") and (name == "reboot" or args[:1] == ["reboot"]):
        return node_actions.reboot(path)
    if name == "cat" and args == ["/proc/sys/kernel/random/boot_id"]:
        return state["boot_id"] + "\n", 0
    if name == "hostname":
        return state["node"] + "\n", 0
    if name == "true":
        return "", 0
    if name == "sleep":
        time.sleep(float(args[0]) if args else 0)
        return "", 0
    return f"sh: 1: {name}: not found\n", 127


def run_script(script: str, path: Path, out: Any) -> int:
    lexer = shlex.shlex(script, posix=True, punctuation_chars=";")
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for word in lexer:
        if word == ";":
            commands.append([])
        elif word != "2>&1":
            commands[-1].append(word)
    rc = 0
    for argv in filter(None, commands):
        if argv[0] == "echo":
            out.write(" ".join(a.replace("$?", str(rc)) for a in argv[1:]) + "\n")
            rc = 0
            continue
        text, rc = run_command(argv, path)
        out.write(text)
    return rc


def main() -> int:
    path = Path(sys.argv[1])
    script = os.environ.get("SSH_ORIGINAL_COMMAND", "")
    if not script.strip():
        sys.stdout.write("This is a simulated GPU node; interactive shells are not available.\n")
        return 1
    try:
        rc = run_script(script, path, sys.stdout)
    except NodeRebooting:
        return 255
    except ValueError as err:  # unbalanced quotes and the like, as sh would refuse them
        sys.stdout.write(f"sh: 1: Syntax error: {err}\n")
        return 2
    sys.stdout.flush()
    return rc


if __name__ == "__main__":
    sys.exit(main())
