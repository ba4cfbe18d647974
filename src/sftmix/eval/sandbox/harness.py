"""What runs inside the sandbox: the harness (framed JSON over its stdin and a private copy of its
stdout) and the plain-data codec both sides of the pipe share."""

from __future__ import annotations

MAX_FRAME = 16 * 1024 * 1024  # largest message accepted from a sample

# Plain-data codec, used on both sides of the pipe: the same source runs in the sandbox (prepended
# to the harness) and here. Exact types only (``type(x) is int``), so no subclass crosses.
CODEC = r'''
def _enc(x, depth=0):
    if depth > 200:
        raise ValueError("value nested too deeply")
    t = type(x)
    if x is None or t is bool or t is int or t is str:
        return x
    if t is float:
        return {"float": repr(x)}
    if t is list:
        return [_enc(v, depth + 1) for v in x]
    if t is tuple:
        return {"tuple": [_enc(v, depth + 1) for v in x]}
    if t is dict:
        return {"dict": [[_enc(k, depth + 1), _enc(v, depth + 1)] for k, v in x.items()]}
    if t is set or t is frozenset:
        return {t.__name__: [_enc(v, depth + 1) for v in x]}
    if t is bytes:
        return {"bytes": x.hex()}
    if t is complex:
        return {"complex": [repr(x.real), repr(x.imag)]}
    raise TypeError("a value of type %s cannot cross the sandbox boundary" % t.__name__)


def _dec(x, depth=0):
    if depth > 200:
        raise ValueError("value nested too deeply")
    if x is None or type(x) in (bool, int, str):
        return x
    if type(x) is list:
        return [_dec(v, depth + 1) for v in x]
    if type(x) is not dict or len(x) != 1:
        raise ValueError("malformed value")
    (tag, v), = x.items()
    if tag == "float":
        return float(v)
    if tag == "complex":
        return complex(float(v[0]), float(v[1]))
    if tag == "bytes":
        return bytes.fromhex(v)
    items = [_dec(i, depth + 1) for i in v] if tag != "dict" else None
    if tag == "tuple":
        return tuple(items)
    if tag == "set":
        return set(items)
    if tag == "frozenset":
        return frozenset(items)
    if tag == "dict":
        return {_dec(k, depth + 1): _dec(w, depth + 1) for k, w in v}
    raise ValueError("unknown tag %r" % tag)
'''
_codec: dict = {}
exec(compile(CODEC, "sftmix-codec", "exec"), _codec)  # the same definitions on this side of the pipe
encode, decode = _codec["_enc"], _codec["_dec"]

# Runs inside the sandbox. Frames are 8-byte little-endian lengths + JSON, read from stdin and
# written to a private copy of stdout; the sample's own fd 1 is pointed at stderr and its stdin
# at /dev/null, so its prints cannot mix with the frames.
HARNESS = CODEC + r'''
import os, sys
_read_fd, _write_fd = os.dup(0), os.dup(1)
_null = os.open(os.devnull, os.O_RDONLY)
os.dup2(_null, 0)
os.dup2(2, 1)
_exit, _write, _read = os._exit, os.write, os.read

def _recv():
    head = b""
    while len(head) < 8:
        chunk = _read(_read_fd, 8 - len(head))
        if not chunk:
            _exit(3)
        head += chunk
    n, body = int.from_bytes(head, "little"), b""
    while len(body) < n:
        chunk = _read(_read_fd, min(1 << 20, n - len(body)))
        if not chunk:
            _exit(3)
        body += chunk
    import json
    return json.loads(body)

def _send(obj):
    import json
    data = json.dumps(obj).encode()
    data = len(data).to_bytes(8, "little") + data
    while data:
        data = data[_write(_write_fd, data):]

_send({"alive": True})  # before any sample code: a session without it never started Python
_job = _recv()
_globals = {}
try:
    exec(compile(_job["program"], "<sample>", "exec"), _globals)
    _fn = _globals[_job["entry_point"]] if _job.get("entry_point") else None
except BaseException as e:
    try:
        _send({"load_error": "%s: %s" % (type(e).__name__, str(e)[:300])})
    finally:
        _exit(1)
if _fn is None:  # a whole program (run_program): done when it returns
    _send({"done": _job["nonce"]})
    _exit(0)
_send({"ready": True})
while True:
    _call = _recv()
    try:
        _value = _fn(*_dec(_call["args"]), **{k: _dec(v) for k, v in _call["kwargs"].items()})
        _reply = {"value": _enc(_value)}
    except BaseException as e:
        _reply = {"raised": type(e).__name__, "message": str(e)[:300]}
    _send(_reply)
'''
