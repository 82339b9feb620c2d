"""The `logs` plugin in Python: the action `logs` on a worker answers the end of the
supervisor program's log (the Rust example's twin, examples/logs-plugin)."""

from componentize_py_types import Err
from wit_world.imports import supervisor, types

import wit_world
from marvin_plugin import Capability, Kind, Response, args, handles, info


class WitWorld(wit_world.WitWorld):
    def describe(self) -> types.PluginInfo:
        return info("logs-py", "0.1.0", Kind.WORKER, ["logs"], [Capability.SUPERVISOR])

    def idempotent_actions(self):
        # Reading a log twice changes nothing.
        return handles(Kind.WORKER, ["logs"])

    def handle(self, request: types.Request) -> types.Response:
        if not isinstance(request.target, types.Target_Program):
            return Response.fail("logs works on supervisor programs").to_wit()
        program = request.target.value
        a = args(request)
        size = min(int(a.get("bytes", 4096)), 1 << 20)
        try:
            text = supervisor.tail_log(program, size)
        except Err as e:
            # The host's error names the missing grant, or what supervisord said.
            return Response.error(e).to_wit()
        if "lines" in a:
            kept = text.splitlines()
            text = "\n".join(kept[max(len(kept) - int(a["lines"]), 0):])
        lines = len(text.splitlines())
        return (
            Response.ok(text)
            .with_("program", program)
            .with_("bytes", size)
            .with_("lines", lines)
            .to_wit()
        )
