// Helpers for marvin-manager plugins written in JavaScript, mirroring the Rust SDK.
//
// A plugin is an ES module exporting `describe`, `idempotentActions` and `handle`;
// `jco componentize` (npm: @bytecodealliance/jco with @bytecodealliance/componentize-js)
// makes the component:
//
//   jco componentize app.js --wit wit --world-name plugin-with-idempotence -o plugin.wasm
//
// Host calls are imported from 'marvin:manager/docker@0.1.0', '…/supervisor@0.1.0' and
// '…/log@0.1.0'; a failing call throws an error whose `payload` is the WIT error variant
// (`{ tag: 'permission-denied', val: '…' }`): `Response.error(e)` turns it into the failed
// response the Rust SDK's `Response::error` gives.

const ERROR_KINDS = {
  'permission-denied': 'permission denied',
  'not-found': 'not found',
  unavailable: 'unavailable',
  'timed-out': 'timed out',
  'already-started': 'already started',
  'not-running': 'not running',
  'spawn-error': 'spawn error',
  failed: 'failed',
};

/** The (kind, action) pairs of `actions`; kind is 'container' or 'worker'. */
export function handles(kind, actions) {
  return actions.map((action) => ({ kind, action }));
}

/** What `describe` returns: name, version, the pairs, the capabilities asked for. */
export function info(name, version, kind, actions, capabilities) {
  return { name, version, handles: handles(kind, actions), capabilities };
}

/** Core's `args` as an object (Core sends `[]` when there are none). */
export function args(request) {
  try {
    const value = JSON.parse(request.args || '{}');
    return value && typeof value === 'object' && !Array.isArray(value) ? value : {};
  } catch {
    return {};
  }
}

/** A host call's error as text: "permission denied: …", "not found: …". */
export function errorText(e) {
  const v = e && e.payload ? e.payload : e;
  if (v && typeof v === 'object' && 'tag' in v) {
    const kind = ERROR_KINDS[v.tag] || 'failed';
    const text = String(v.val);
    return text.startsWith(kind) ? text : `${kind}: ${text}`;
  }
  return `failed: ${String(e)}`;
}

/** The plugin's answer: Response.ok(text), Response.fail(text), Response.error(e), with
 * metadata added by `.with(key, value)`; `handle` returns `.toWit()`. */
export class Response {
  constructor(success, output, error) {
    this.success = success;
    this.output = output;
    this.errorText = error;
    this.metadata = {};
  }
  static ok(output) {
    return new Response(true, output, undefined);
  }
  static fail(error) {
    return new Response(false, undefined, error);
  }
  static error(e) {
    return Response.fail(errorText(e));
  }
  with(key, value) {
    this.metadata[key] = value;
    return this;
  }
  withOutput(output) {
    this.output = output;
    return this;
  }
  toWit() {
    return {
      success: this.success,
      output: this.output,
      error: this.errorText,
      metadata: JSON.stringify(this.metadata),
    };
  }
}
