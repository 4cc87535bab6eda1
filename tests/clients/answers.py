"""What a coding client's first turn is answered with: a call of its own file-writing tool.

Shared by the MCP agent of the coding-client tests (tests/python_mcp/coding_agent.py), which sees
the tools as the gateway hands them to the agent (chat function tools; a free-form `custom` tool
as a function taking one string `input`), and by the recorder (tests/clients/record.py), which
sees them as the client sent them and reads them into the same `(name, parameters)` pairs.
"""
import json
import shlex


def patch_adding(name: str, content: str) -> str:
    """Codex's `apply_patch` format adding one file (its paths are relative to the working dir)."""
    lines = "".join(f"+{line}\n" for line in content.splitlines())
    return f"*** Begin Patch\n*** Add File: {name}\n{lines}*** End Patch\n"


def javascript_patch(name: str, content: str) -> str:
    """Codex's `exec` tool input applying the patch that adds the file."""
    patch = json.dumps(patch_adding(name, content))
    return f"const result = await tools.apply_patch({patch});\ntext(JSON.stringify(result));\n"


def write_call(tools: list[tuple[str, dict]], directory: str, name: str, content: str):
    """`(tool name, arguments)` writing `content` to `directory/name` with one of `tools`, or
    None when none of them writes files. Preference: a tool made for writing files, then a shell."""
    by_name = dict(tools)
    path = f"{directory.rstrip('/')}/{name}"
    if "Write" in by_name:  # Claude Code: absolute paths only
        return "Write", {"file_path": path, "content": content}
    if "apply_patch" in by_name:  # Codex: free-form (custom) or a function with `input`
        return "apply_patch", {"input": patch_adding(name, content)}
    shell = f"printf %s {shlex.quote(content)} > {shlex.quote(path)}"
    if "exec_command" in by_name:
        return "exec_command", {"cmd": shell}
    for tool in ("functions__exec", "exec"):
        # Codex's code mode (its default model): one free-form tool running JavaScript that
        # calls the other tools, `apply_patch` among them.
        if "input" in (by_name.get(tool) or {}).get("properties", {}):
            return tool, {"input": javascript_patch(name, content)}
    if "shell" in by_name:
        return "shell", {"command": ["bash", "-lc", shell]}
    return None


def chat_tools(tools: list | None) -> list[tuple[str, dict]]:
    """Chat function tools (`{"type": "function", "function": {name, parameters}}`) as pairs."""
    out = []
    for tool in tools or []:
        function = tool.get("function") or {}
        if function.get("name"):
            out.append((function["name"], function.get("parameters") or {}))
    return out


def arguments_text(arguments: dict) -> str:
    return json.dumps(arguments)
