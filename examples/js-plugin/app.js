// The `logs` plugin in JavaScript: the action `logs` on a worker answers the end of the
// supervisor program's log (the Rust example's twin, examples/logs-plugin).

import { tailLog } from 'marvin:manager/supervisor@0.1.0';
import { Response, args, handles, info } from './marvin_plugin.js';

export function describe() {
  return info('logs-js', '0.1.0', 'worker', ['logs'], ['supervisor']);
}

// Reading a log twice changes nothing.
export function idempotentActions() {
  return handles('worker', ['logs']);
}

export function handle(request) {
  if (request.target.tag !== 'program') {
    return Response.fail('logs works on supervisor programs').toWit();
  }
  const program = request.target.val;
  const a = args(request);
  const bytes = Math.min(Number(a.bytes ?? 4096), 1 << 20);
  let text;
  try {
    text = tailLog(program, bytes);
  } catch (e) {
    // The host's error names the missing grant, or what supervisord said.
    return Response.error(e).toWit();
  }
  if ('lines' in a) {
    const kept = text.replace(/\n$/, '').split('\n');
    text = kept.slice(Math.max(kept.length - Number(a.lines), 0)).join('\n');
  }
  const lines = text === '' ? 0 : text.replace(/\n$/, '').split('\n').length;
  return Response.ok(text).with('program', program).with('bytes', bytes).with('lines', lines).toWit();
}
