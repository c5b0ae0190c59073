"""Request log lines from a compiled subset of Go's ``text/template`` (Knative ``request_log.go``).

The queue-proxy and activator write one line per request, rendered from the
``logging.request-log-template`` setting. The template is compiled once, at start-up, into a
single generated Python function (one ``"".join`` over constants, attribute reads and a few
escaping helpers), so rendering a line costs a few microseconds and no parsing.

Supported template subset
-------------------------
* Text, copied as is. Like Knative, a newline is appended to the template *source* when it does
  not end with one, so every line ends with ``\\n`` (unless the template ends with a ``-}}`` trim
  marker, which trims that newline too, exactly as in Go).
* ``{{.Field.Sub}}``: a field of the context, printed like Go's ``fmt.Print``: strings as is,
  integers in decimal, floats like Go's ``%v`` (shortest repr; exponent form when the exponent
  is < -4 or >= 6, written ``1e-05``, ``1.5e-07``, ``1.234567e+06``, ``1e+21``; ``12.0`` prints
  ``12``). The fields are:

  - ``.Request``: ``Method``, ``RequestURI``, ``ContentLength`` (int64), ``UserAgent``,
    ``RemoteAddr``, ``Referer``, ``Proto``, ``Host``
  - ``.Response``: ``Code`` (int), ``Size`` (int), ``Latency`` (float64 seconds)
  - ``.Revision``: ``Name``, ``Namespace``, ``Service``, ``Configuration``, ``PodName``, ``PodIP``
  - ``.TraceID``

* Comments ``{{/* ... */}}`` and trim markers ``{{-`` / ``-}}`` (a dash plus one space).
* String literals in double quotes (Go escapes) or backquotes.
* Functions ``js`` (Go's ``JSEscapeString``), ``html`` (``HTMLEscapeString``), ``urlquery``
  (``url.QueryEscape``), ``print`` (``fmt.Sprint``), ``printf`` (``fmt.Sprintf``) and ``len``
  (length in UTF-8 bytes of a string), in call form ``{{js .X}}``, pipeline form
  ``{{.X | js}}`` and parenthesised ``{{js (print .A .B)}}``. Like Go's, ``js`` escapes ``'`` as
  ``\\'``, which JSON does not accept: a User-Agent with an apostrophe makes the default template's
  line invalid JSON, in Knative too.
* ``printf`` takes a literal format with the verbs ``%s %d %v %q %f %.Nf %%``. As in Go, an
  operand of the wrong type renders ``%!d(string=GET)``, a missing one ``%!d(MISSING)``, extra
  ones ``%!(EXTRA int=200)``.
* ``{{if PIPELINE}}...{{else if PIPELINE}}...{{else}}...{{end}}`` with Go truthiness (empty
  string, 0 and 0.0 are false).

Anything else (``range``, ``with``, ``define``, ``template``, ``block``, variables ``$x``,
number or boolean constants, ``eq``/``and``/``index`` and the other builtins, unknown fields) is a
``TemplateError`` at compile time naming the construct and its offset. Go reports unknown fields
and ``len`` of a number only when executing (and Knative then writes the fallback line); here they
fail at start-up instead.

Strings are Python ``str``. For byte-exact parity with Go, request bytes should be decoded as
UTF-8 with ``surrogateescape`` and the rendered line encoded the same way: escaping then treats
undecodable bytes as Go treats invalid UTF-8 (copied through). Printable-rune checks use the
running Python's Unicode tables, which may lag Go's by a version.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, TypeAlias, cast

__all__ = [
    "DEFAULT_TEMPLATE",
    "LogContext",
    "LogRequest",
    "LogResponse",
    "LogRevision",
    "RequestLogTemplate",
    "TemplateError",
    "fallback_line",
    "trace_id_from_headers",
]

DEFAULT_TEMPLATE: Final = (
    '{"httpRequest": {"requestMethod": "{{.Request.Method}}", '
    '"requestUrl": "{{js .Request.RequestURI}}", '
    '"requestSize": "{{.Request.ContentLength}}", '
    '"status": {{.Response.Code}}, '
    '"responseSize": "{{.Response.Size}}", '
    '"userAgent": "{{js .Request.UserAgent}}", '
    '"remoteIp": "{{js .Request.RemoteAddr}}", '
    '"serverIp": "{{.Revision.PodIP}}", '
    '"referer": "{{js .Request.Referer}}", '
    '"latency": "{{.Response.Latency}}s", '
    '"protocol": "{{.Request.Proto}}"}, '
    '"traceId": "{{.TraceID}}"}'
)


class TemplateError(ValueError):
    """A request log template outside the supported subset, or malformed."""

    def __init__(self, problem: str, offset: int | None = None) -> None:
        where = "" if offset is None else f" at offset {offset}"
        super().__init__(f"request log template: {problem}{where}")
        self.problem = problem
        self.offset = offset


@dataclass(slots=True)
class LogRequest:
    """The request fields a template can read (``.Request``)."""

    Method: str
    RequestURI: str
    ContentLength: int
    UserAgent: str
    RemoteAddr: str
    Referer: str
    Proto: str
    Host: str


@dataclass(slots=True)
class LogResponse:
    """The response fields a template can read (``.Response``); Latency is in seconds."""

    Code: int
    Size: int
    Latency: float


@dataclass(slots=True)
class LogRevision:
    """Static revision and pod information (``.Revision``)."""

    Name: str
    Namespace: str
    Service: str
    Configuration: str
    PodName: str
    PodIP: str


@dataclass(slots=True)
class LogContext:
    """Everything one request log line is rendered from."""

    Request: LogRequest
    Response: LogResponse
    Revision: LogRevision
    TraceID: str


# --------------------------------------------------------------------------------------------
# Runtime helpers: Go's escapers and fmt formatting. The generated render function calls these.
# --------------------------------------------------------------------------------------------


def _to_bytes(s: str) -> bytes:
    """The Go string (bytes) a Python string stands for."""
    try:
        return s.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return s.encode("utf-8", "surrogatepass")


# template.JSEscapeString: ASCII specials and control characters (\u00XX, uppercase hex).
_JS_TABLE: Final[dict[int, str]] = {c: f"\\u{c:04X}" for c in range(0x20)}
_JS_TABLE.update(
    {
        ord("\\"): "\\\\",
        ord("'"): "\\'",
        ord('"'): '\\"',
        ord("<"): "\\u003C",
        ord(">"): "\\u003E",
        ord("&"): "\\u0026",
        ord("="): "\\u003D",
    }
)


_CONTROL_BYTES: Final = bytes(range(0x20))
_JS_SPECIAL_BYTES: Final = _CONTROL_BYTES + b"\\'\"<>&="


def _js(s: str) -> str:
    """Go's ``template.JSEscapeString``."""
    # Hot path: bytes.translate with a delete set finds specials at C speed; str.translate with
    # multi-character replacements costs ~60 ns per character, so it is kept for control chars.
    b = s.encode("utf-8", "surrogatepass")
    n = len(b)
    if len(b.translate(None, _JS_SPECIAL_BYTES)) != n:
        if len(b.translate(None, _CONTROL_BYTES)) != n:
            s = s.translate(_JS_TABLE)
        else:
            s = (
                s.replace("\\", "\\\\")
                .replace("'", "\\'")
                .replace('"', '\\"')
                .replace("<", "\\u003C")
                .replace(">", "\\u003E")
                .replace("&", "\\u0026")
                .replace("=", "\\u003D")
            )
    if s.isascii() or s.isprintable():
        return s
    # Non-printable non-ASCII runes become \uXXXX (uppercase, at least 4 digits). DEL is copied
    # (Go only checks runes >= 0x80) and so are surrogates: they stand for invalid UTF-8 bytes,
    # which Go copies as is.
    return "".join(
        [
            ch
            if ch < "\x80" or ch.isprintable() or "\ud800" <= ch <= "\udfff"
            else f"\\u{ord(ch):04X}"
            for ch in s
        ]
    )


_HTML_SPECIAL_BYTES: Final = b"\x00\"'&<>"


def _html(s: str) -> str:
    """Go's ``template.HTMLEscapeString`` (NUL becomes U+FFFD)."""
    b = s.encode("utf-8", "surrogatepass")
    if len(b.translate(None, _HTML_SPECIAL_BYTES)) == len(b):
        return s
    return (
        s.replace("&", "&amp;")
        .replace("'", "&#39;")
        .replace('"', "&#34;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace("\x00", "\ufffd")
    )


_URL_SAFE: Final = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~"
_URLQUERY_TABLE: Final[tuple[str, ...]] = tuple(
    chr(b) if b in _URL_SAFE else "+" if b == 0x20 else f"%{b:02X}" for b in range(256)
)


def _urlquery(s: str) -> str:
    """Go's ``url.QueryEscape``: unreserved bytes kept, space as ``+``, the rest ``%XX``."""
    table = _URLQUERY_TABLE
    return "".join([table[b] for b in _to_bytes(s)])


def _byte_len(s: str) -> int:
    """Go's ``len`` of a string: its length in UTF-8 bytes."""
    return len(s) if s.isascii() else len(_to_bytes(s))


def _go_float(x: float) -> str:
    """A float64 as Go's ``%v`` prints it (strconv ``'g'``, shortest, exponent if < -4 or >= 6)."""
    r = repr(x)
    if "e" in r:
        # repr switches to exponent form for exponents < -4 (as Go) or >= 16, and writes it the
        # way Go does: shortest digits, at least two exponent digits ("1e-05", "1e+16").
        return r
    if -1e6 < x < 1e6:
        return r[:-2] if r[-2:] == ".0" else r
    if x != x:
        return "NaN"
    if x == _INF:
        return "+Inf"
    if x == -_INF:
        return "-Inf"
    # 1e6 <= |x| < 1e16: repr is plain, Go wants d.ddde+XX.
    neg = r[0] == "-"
    whole, _, frac = (r[1:] if neg else r).partition(".")
    digits = (whole + frac).rstrip("0")
    mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
    return f"{'-' if neg else ''}{mantissa}e+{len(whole) - 1:02d}"


_INF: Final = float("inf")


def _go_fixed(x: float, prec: int) -> str:
    """Go's ``%.Nf``: correctly rounded, Go's spelling of infinities and NaN."""
    if x != x:
        return "NaN"
    if x in (_INF, -_INF):
        return "+Inf" if x > 0 else "-Inf"
    return f"{x:.{prec}f}"


_QUOTE_ESCAPES: Final[dict[int, str]] = {
    7: "\\a",
    8: "\\b",
    12: "\\f",
    10: "\\n",
    13: "\\r",
    9: "\\t",
    11: "\\v",
    0x5C: "\\\\",
}


def _quote_char(ch: str, quote: str) -> str:
    """One rune of a Go-syntax quoted literal (strconv.Quote rules, lowercase hex)."""
    o = ord(ch)
    if ch == quote:
        return "\\" + ch
    esc = _QUOTE_ESCAPES.get(o)
    if esc is not None:
        return esc
    if ch.isprintable():
        return ch
    if 0xDC80 <= o <= 0xDCFF:  # an undecodable byte: Go writes invalid UTF-8 as \xNN
        return f"\\x{o - 0xDC00:02x}"
    if o < 0x20 or o == 0x7F:
        return f"\\x{o:02x}"
    if o < 0x10000:
        return f"\\u{o:04x}"
    return f"\\U{o:08x}"


def _go_quote(s: str) -> str:
    """Go's ``%q`` of a string (``strconv.Quote``)."""
    if s.isascii() and s.isprintable() and '"' not in s and "\\" not in s:
        return f'"{s}"'
    return '"' + "".join([_quote_char(ch, '"') for ch in s]) + '"'


def _go_quote_rune(n: int) -> str:
    """Go's ``%q`` of an integer (``strconv.QuoteRune``; invalid runes become U+FFFD)."""
    if n < 0 or n > 0x10FFFF or 0xD800 <= n <= 0xDFFF:
        n = 0xFFFD
    return "'" + _quote_char(chr(n), "'") + "'"


def _int_prec(n: int, prec: int) -> str:
    """An integer printed with a precision (minimum digits), as a bad-verb operand is."""
    if prec == 0 and n == 0:
        return ""
    digits = str(abs(n)).rjust(prec, "0")
    return "-" + digits if n < 0 else digits


def fallback_line(method: str, code: int, latency: float, url: str) -> str:
    """Knative's line when rendering fails, so the request is still logged."""
    return (
        f"Invalid request log template: method: {method}, response code: {code}, "
        f"latency: {_go_float(latency)}, url: {url}\n"
    )


def trace_id_from_headers(traceparent: bytes | None, b3: bytes | None) -> str:
    """``.TraceID``: second dash-separated field of ``traceparent``, else ``X-B3-TraceId``.

    Mirrors Knative's ``ExtractTraceID``: a traceparent without a dash falls back to B3.
    """
    if traceparent:
        parts = traceparent.split(b"-", 2)
        if len(parts) >= 2:
            return parts[1].decode("utf-8", "surrogateescape")
    if b3:
        return b3.decode("utf-8", "surrogateescape")
    return ""


# Names the generated code sees.
_RUNTIME: Final[dict[str, object]] = {
    "_js": _js,
    "_html": _html,
    "_urlquery": _urlquery,
    "_byte_len": _byte_len,
    "_go_float": _go_float,
    "_go_fixed": _go_fixed,
    "_go_quote": _go_quote,
    "_go_quote_rune": _go_quote_rune,
    "_int_prec": _int_prec,
}
# Helpers taking one string, folded at compile time when their argument is constant.
_STRING_FUNCS: Final[dict[str, Callable[[str], str]]] = {
    "_js": _js,
    "_html": _html,
    "_urlquery": _urlquery,
    "_go_quote": _go_quote,
}

# --------------------------------------------------------------------------------------------
# Compiler
# --------------------------------------------------------------------------------------------

_STRING: Final = "string"
_REQUEST_FIELDS: Final = (
    "Method",
    "RequestURI",
    "ContentLength",
    "UserAgent",
    "RemoteAddr",
    "Referer",
    "Proto",
    "Host",
)
_REVISION_FIELDS: Final = ("Name", "Namespace", "Service", "Configuration", "PodName", "PodIP")
# Go type of each leaf field (used in fmt's "%!d(type=value)" output).
_FIELDS: Final[dict[str, dict[str, str] | str]] = {
    "Request": {
        name: ("int64" if name == "ContentLength" else _STRING) for name in _REQUEST_FIELDS
    },
    "Response": {"Code": "int", "Size": "int", "Latency": "float64"},
    "Revision": dict.fromkeys(_REVISION_FIELDS, _STRING),
    "TraceID": _STRING,
}

_SPACE: Final = " \t\r\n"
_LEFT_TRIM: Final = frozenset({"- ", "-\t", "-\r", "-\n"})
_UNSUPPORTED_ACTIONS: Final = frozenset(
    {"range", "with", "define", "template", "block", "break", "continue"}
)
_CONSTANTS: Final = frozenset({"true", "false", "nil"})
_FUNCTIONS: Final = frozenset({"js", "html", "urlquery", "print", "printf", "len"})
_UNSUPPORTED_FUNCTIONS: Final = frozenset(
    {"and", "or", "not", "eq", "ne", "lt", "le", "gt", "ge", "index", "slice", "call", "println"}
)
_GO_ESCAPES: Final[dict[str, int]] = {
    "a": 7,
    "b": 8,
    "f": 12,
    "n": 10,
    "r": 13,
    "t": 9,
    "v": 11,
    "\\": 0x5C,
    '"': 0x22,
}
_HEX: Final = frozenset("0123456789abcdefABCDEF")


class _Code:
    """A Python expression (in generated source) that evaluates to a ``str``."""

    __slots__ = ("src",)

    def __init__(self, src: str) -> None:
        self.src = src


_Part: TypeAlias = str | _Code  # a plain str part is literal text


class _Val:
    """A compiled value: a Go type plus, for strings, its parts, else a Python expression."""

    __slots__ = ("gotype", "parts", "src")

    def __init__(self, gotype: str, parts: list[_Part] | None = None, src: str = "") -> None:
        self.gotype = gotype
        self.parts = parts if parts is not None else []
        self.src = src

    @property
    def is_string(self) -> bool:
        return self.gotype == _STRING


class _Tok:
    """A token inside an action: field, string, ident, pipe, lparen, rparen or error.

    An ``error`` token is a construct outside the subset (its text is the problem); it is raised
    when the parser reaches it, so the first problem in reading order is the one reported.
    """

    __slots__ = ("kind", "offset", "text")

    def __init__(self, kind: str, text: str, offset: int) -> None:
        self.kind = kind
        self.text = text
        self.offset = offset


class _Action:
    """One ``{{...}}`` action: where it starts and its tokens."""

    __slots__ = ("offset", "toks")

    def __init__(self, offset: int, toks: list[_Tok]) -> None:
        self.offset = offset
        self.toks = toks


def _is_name_char(c: str) -> bool:
    return c == "_" or c.isalnum()


def _right_delim(src: str, p: int) -> tuple[int, bool] | None:
    """End position and trim flag if a closing ``}}`` or `` -}}`` starts at *p*."""
    if src.startswith("}}", p):
        return p + 2, False
    if p + 1 < len(src) and src[p] in _SPACE and src[p + 1] == "-" and src.startswith("}}", p + 2):
        return p + 4, True
    return None


def _unquote(body: str, offset: int) -> str:
    """A Go interpreted string literal's value (escapes as in ``strconv.Unquote``)."""
    if "\\" not in body:
        return body
    out = bytearray()
    i, n = 0, len(body)
    while i < n:
        c = body[i]
        if c != "\\":
            out += _to_bytes(c)
            i += 1
            continue
        e = body[i + 1]  # the lexer guarantees a character after a backslash
        if e in _GO_ESCAPES:
            out.append(_GO_ESCAPES[e])
            i += 2
        elif e in "xuU":
            width = {"x": 2, "u": 4, "U": 8}[e]
            digits = body[i + 2 : i + 2 + width]
            if len(digits) != width or not _HEX.issuperset(digits):
                raise TemplateError(f"invalid \\{e} escape in string", offset)
            value = int(digits, 16)
            if e == "x":
                out.append(value)
            elif value > 0x10FFFF or 0xD800 <= value <= 0xDFFF:
                raise TemplateError(f"invalid \\{e} escape in string", offset)
            else:
                out += chr(value).encode()
            i += 2 + width
        elif e in "01234567":
            digits = body[i + 1 : i + 4]
            if len(digits) != 3 or not set(digits) <= set("01234567") or int(digits, 8) > 255:
                raise TemplateError("invalid octal escape in string", offset)
            out.append(int(digits, 8))
            i += 4
        else:
            raise TemplateError(f"unknown escape sequence \\{e} in string", offset)
    return out.decode("utf-8", "surrogateescape")


def _lex_action(src: str, p: int, start: int) -> tuple[list[_Tok], int, bool]:
    """Tokens of the action whose body starts at *p*; returns them, end position, trim flag."""
    toks: list[_Tok] = []
    n = len(src)
    while True:
        delim = _right_delim(src, p)
        if delim is not None:
            return toks, delim[0], delim[1]
        if p >= n:
            raise TemplateError("unclosed action", start)
        c = src[p]
        if c in _SPACE:
            p += 1
        elif c == "|":
            toks.append(_Tok("pipe", c, p))
            p += 1
        elif c == "(":
            toks.append(_Tok("lparen", c, p))
            p += 1
        elif c == ")":
            toks.append(_Tok("rparen", c, p))
            p += 1
        elif c == '"':
            q = p + 1
            while q < n and src[q] != '"':
                if src[q] == "\n":
                    break
                q += 2 if src[q] == "\\" and q + 1 < n and src[q + 1] != "\n" else 1
            if q >= n or src[q] != '"':
                raise TemplateError("unterminated quoted string", p)
            toks.append(_Tok("string", _unquote(src[p + 1 : q], p), p))
            p = q + 1
        elif c == "`":
            q = src.find("`", p + 1)
            if q < 0:
                raise TemplateError("unterminated raw quoted string", p)
            toks.append(_Tok("string", src[p + 1 : q].replace("\r", ""), p))
            p = q + 1
        elif c == ".":
            if p + 1 < n and src[p + 1].isdigit():
                p = _unsupported(toks, "unsupported number literal", src, p)
                continue
            q = p  # a field chain: (.Name)+
            while q + 1 < n and src[q] == "." and _is_name_char(src[q + 1]):
                q += 2
                while q < n and _is_name_char(src[q]):
                    q += 1
            if q == p:
                toks.append(_Tok("error", _BARE_DOT, p))
                p += 1
                continue
            _check_terminator(src, q, src[p:q])
            toks.append(_Tok("field", src[p:q], p))
            p = q
        elif c == "_" or c.isalpha():
            q = p
            while q < n and _is_name_char(src[q]):
                q += 1
            _check_terminator(src, q, src[p:q])
            toks.append(_Tok("ident", src[p:q], p))
            p = q
        elif c == "$":
            q = p + 1
            while q < n and _is_name_char(src[q]):
                q += 1
            toks.append(_Tok("error", f'unsupported variable "{src[p:q]}"', p))
            p = q
        elif c.isdigit() or c in "+-":
            p = _unsupported(toks, "unsupported number literal", src, p)
        elif c == "'":
            q = p + 1
            while q < n and src[q] not in "'\n":
                q += 2 if src[q] == "\\" else 1
            toks.append(_Tok("error", "unsupported character constant", p))
            p = q + 1
        elif c in ":=":
            toks.append(_Tok("error", "unsupported variable declaration or assignment", p))
            p += 2 if src.startswith(":=", p) else 1
        else:
            raise TemplateError(f"unexpected {c!r} in action", p)


_BARE_DOT: Final = 'unsupported use of "." (the whole context); use a field such as .Request.Method'


def _unsupported(toks: list[_Tok], problem: str, src: str, p: int) -> int:
    """Record a number-like word as an error token (raised if the parser reaches it)."""
    q = p + 1
    while q < len(src) and (_is_name_char(src[q]) or src[q] in ".+-"):
        q += 1
    toks.append(_Tok("error", problem, p))
    return q


def _check_terminator(src: str, q: int, word: str) -> None:
    """After a field or identifier, only space, ``|``, parentheses or ``}}`` may follow."""
    if q >= len(src) or src[q] in _SPACE or src[q] in "|()" or src.startswith("}}", q):
        return
    raise TemplateError(f"unexpected {src[q]!r} after {word!r}", q)


def _lex(src: str) -> list[str | _Action]:
    """Split *src* into literal text and actions, applying trim markers and dropping comments."""
    items: list[str | _Action] = []
    pos, n = 0, len(src)
    trim_leading = False
    while True:
        start = src.find("{{", pos)
        end = n if start < 0 else start
        text = src[pos:end]
        if trim_leading:
            text = text.lstrip(_SPACE)
        # "{{- " trims the text before; the dash must be followed by a space ("{{-3}}" is not).
        left_trim = start >= 0 and src[start + 2 : start + 4] in _LEFT_TRIM
        if left_trim:
            text = text.rstrip(_SPACE)
        if text:
            items.append(text)
        if start < 0:
            return items
        p = start + (4 if left_trim else 2)
        if src.startswith("/*", p):
            close = src.find("*/", p + 2)
            if close < 0:
                raise TemplateError("unclosed comment", start)
            delim = _right_delim(src, close + 2)
            if delim is None:
                raise TemplateError("comment ends before closing delimiter", close + 2)
            pos, trim_leading = delim
            continue
        toks, pos, trim_leading = _lex_action(src, p, start)
        items.append(_Action(start, toks))


def _merge(parts: list[_Part]) -> list[_Part]:
    """Adjacent literal parts joined, empty ones dropped."""
    out: list[_Part] = []
    for part in parts:
        if isinstance(part, str):
            if not part:
                continue
            if out and isinstance(out[-1], str):
                out[-1] += part
                continue
        out.append(part)
    return out


def _expr(parts: list[_Part]) -> str:
    """A Python expression evaluating to the concatenation of *parts*."""
    merged = _merge(parts)
    if not merged:
        return "''"
    srcs = [repr(p) if isinstance(p, str) else p.src for p in merged]
    if len(srcs) == 1:
        return srcs[0]
    return '"".join((' + ", ".join(srcs) + "))"


def _const(parts: list[_Part]) -> str | None:
    """The value of *parts* if all are literal text."""
    if all(isinstance(p, str) for p in parts):
        return "".join(cast(list[str], parts))
    return None


def _str_parts(v: _Val) -> list[_Part]:
    """How ``fmt.Print`` writes *v*."""
    if v.is_string:
        return v.parts
    if v.gotype == "float64":
        return [_Code(f"_go_float({v.src})")]
    return [_Code(f"str({v.src})")]


def _call_str(func: str, parts: list[_Part]) -> list[_Part]:
    """``func(parts)`` for a one-string helper, folded when *parts* is constant."""
    value = _const(parts)
    if value is not None:
        return [_STRING_FUNCS[func](value)]
    return [_Code(f"{func}({_expr(parts)})")]


def _sprint(args: list[_Val]) -> list[_Part]:
    """``fmt.Sprint``: a space between operands when neither is a string."""
    out: list[_Part] = []
    for i, a in enumerate(args):
        if i and not a.is_string and not args[i - 1].is_string:
            out.append(" ")
        out.extend(_str_parts(a))
    return out


class _Compiler:
    """Turns the token stream into one Python expression (recursive descent, no AST kept)."""

    def __init__(self, src: str) -> None:
        self.items = _lex(src)
        self.i = 0
        self.toks: list[_Tok] = []
        self.t = 0
        self.end = 0

    # ---- template structure -----------------------------------------------------------------

    def parse_list(self, inside: str = "", opened_at: int = 0) -> tuple[list[_Part], str, int]:
        """Parts up to ``{{else}}``/``{{end}}`` (inside an if) or the end of the template."""
        parts: list[_Part] = []
        while self.i < len(self.items):
            item = self.items[self.i]
            self.i += 1
            if isinstance(item, str):
                parts.append(item)
                continue
            toks = item.toks
            if not toks:
                raise TemplateError("missing value for command (empty action)", item.offset)
            head = toks[0]
            if head.kind == "error":
                raise TemplateError(head.text, head.offset)
            keyword = head.text if head.kind == "ident" else ""
            if keyword in ("else", "end"):
                if not inside:
                    raise TemplateError(f"unexpected {{{{{keyword}}}}}", head.offset)
                self.start_action(toks, 0)
                return parts, keyword, head.offset
            if keyword == "if":
                parts.extend(self.parse_if(toks, 1))
            elif keyword in _UNSUPPORTED_ACTIONS:
                raise TemplateError(f'unsupported action "{keyword}"', head.offset)
            else:
                self.start_action(toks, 0)
                value = self.pipeline()
                self.expect_end()
                parts.extend(_str_parts(value))
        if inside:
            raise TemplateError(f"missing {{{{end}}}} for {{{{{inside}}}}}", opened_at)
        return parts, "", len(self.items)

    def parse_if(self, toks: list[_Tok], first: int) -> list[_Part]:
        """``{{if P}}``, optional ``{{else if P}}`` chain and ``{{else}}``, one ``{{end}}``."""
        if_offset = toks[first - 1].offset
        self.start_action(toks, first)
        if self.t >= len(self.toks):
            raise TemplateError("missing value for if", if_offset)
        cond = self.pipeline()
        self.expect_end()
        then_parts, term, term_offset = self.parse_list("if", if_offset)
        else_parts: list[_Part] = []
        if term == "else":
            rest = self.toks[1:]
            if rest and rest[0].kind == "ident" and rest[0].text == "if":
                else_parts = self.parse_if(self.toks, 2)
            elif rest:
                if rest[0].kind == "ident" and rest[0].text in _UNSUPPORTED_ACTIONS:
                    raise TemplateError(f'unsupported action "else {rest[0].text}"', rest[0].offset)
                raise TemplateError("unexpected operand after else", rest[0].offset)
            else:
                else_parts, term, term_offset = self.parse_list("else", term_offset)
                if term == "else":
                    raise TemplateError("expected {{end}}; found {{else}}", term_offset)
        if term == "end" and len(self.toks) > 1:
            raise TemplateError("unexpected operand after end", self.toks[1].offset)
        folded = _const(cond.parts) if cond.is_string else None
        if folded is not None:
            return then_parts if folded else else_parts
        test = _expr(cond.parts) if cond.is_string else cond.src
        return [_Code(f"({_expr(then_parts)} if {test} else {_expr(else_parts)})")]

    # ---- pipelines ----------------------------------------------------------------------------

    def start_action(self, toks: list[_Tok], first: int) -> None:
        self.toks = toks
        self.t = first
        self.end = toks[-1].offset + len(toks[-1].text) if toks else 0

    def peek(self) -> _Tok | None:
        return self.toks[self.t] if self.t < len(self.toks) else None

    def expect_end(self) -> None:
        tok = self.peek()
        if tok is not None:
            if tok.kind == "error":
                raise TemplateError(tok.text, tok.offset)
            what = "right paren" if tok.kind == "rparen" else repr(tok.text)
            raise TemplateError(f"unexpected {what} in action", tok.offset)

    def pipeline(self) -> _Val:
        """``command ('|' command)*``; each later command gets the previous value appended."""
        value: _Val | None = None
        stage = 0
        while True:
            stage += 1
            tok = self.peek()
            if tok is None or tok.kind in ("pipe", "rparen"):
                offset = tok.offset if tok is not None else self.end
                raise TemplateError("missing command in pipeline", offset)
            value = self.command(value, stage)
            tok = self.peek()
            if tok is None or tok.kind != "pipe":
                return value
            self.t += 1

    def command(self, piped: _Val | None, stage: int) -> _Val:
        """A function call (name, operands, then the piped value) or a single operand."""
        head = self.toks[self.t]
        if head.kind == "ident":
            self.t += 1
            self.check_function(head)
            args: list[_Val] = []
            while (tok := self.peek()) is not None and tok.kind not in ("pipe", "rparen"):
                arg = self.operand()
                # A function name as an argument is a call with no arguments, as in Go.
                args.append(arg if isinstance(arg, _Val) else self.call(arg, []))
            if piped is not None:
                args.append(piped)
            return self.call(head, args)
        if stage > 1:
            raise TemplateError(f"non executable command in pipeline stage {stage}", head.offset)
        value = self.operand()
        extra = self.peek()
        if extra is not None and extra.kind not in ("pipe", "rparen"):
            raise TemplateError(f"can't give argument to non-function {head.text}", extra.offset)
        assert isinstance(value, _Val)
        return value

    def operand(self) -> _Val | _Tok:
        """A field, string, parenthesised pipeline, or a function name (returned as its token)."""
        tok = self.toks[self.t]
        self.t += 1
        if tok.kind == "field":
            return self.field(tok)
        if tok.kind == "string":
            return _Val(_STRING, [tok.text])
        if tok.kind == "lparen":
            value = self.pipeline()
            close = self.peek()
            if close is None or close.kind != "rparen":
                raise TemplateError("unclosed left paren", tok.offset)
            self.t += 1
            return value
        if tok.kind == "ident":
            self.check_function(tok)
            return tok
        if tok.kind == "error":
            raise TemplateError(tok.text, tok.offset)
        raise TemplateError(f"unexpected {tok.text!r} in operand", tok.offset)

    def check_function(self, tok: _Tok) -> None:
        name = tok.text
        if name in _FUNCTIONS:
            return
        if name in _UNSUPPORTED_ACTIONS or name in ("if", "else", "end"):
            raise TemplateError(f'unexpected keyword "{name}" in command', tok.offset)
        if name in _CONSTANTS:
            raise TemplateError(f'unsupported constant "{name}"', tok.offset)
        if name in _UNSUPPORTED_FUNCTIONS:
            raise TemplateError(f'unsupported function "{name}"', tok.offset)
        raise TemplateError(f'function "{name}" not defined', tok.offset)

    def field(self, tok: _Tok) -> _Val:
        """A context field chain; unknown or non-leaf fields are compile-time errors."""
        names = tok.text.split(".")[1:]
        node: object = _FIELDS
        for depth, name in enumerate(names):
            parent = "." + ".".join(names[:depth])
            if not isinstance(node, dict):
                raise TemplateError(
                    f'unknown field "{tok.text}" ({parent} is a {node})', tok.offset
                )
            if name not in node:
                known = ", ".join(node)
                raise TemplateError(
                    f'unknown field "{tok.text}" (fields of {parent}: {known})', tok.offset
                )
            node = node[name]
        if not isinstance(node, str):
            subfields = ", ".join(cast(dict[str, object], node))
            raise TemplateError(
                f'field "{tok.text}" is a struct; use one of its fields: {subfields}', tok.offset
            )
        src = "c." + ".".join(names)
        return _Val(node, [_Code(src)]) if node == _STRING else _Val(node, src=src)

    # ---- functions ----------------------------------------------------------------------------

    def call(self, fn: _Tok, args: list[_Val]) -> _Val:
        name = fn.text
        if name == "print":
            return _Val(_STRING, _sprint(args))
        if name in ("js", "html", "urlquery"):
            return _Val(_STRING, _call_str("_" + name, _sprint(args)))
        if name == "len":
            if len(args) != 1:
                raise TemplateError(
                    f"wrong number of args for len: want 1 got {len(args)}", fn.offset
                )
            arg = args[0]
            if not arg.is_string:
                raise TemplateError(f"len of type {arg.gotype}", fn.offset)
            value = _const(arg.parts)
            if value is not None:
                return _Val("int", src=str(_byte_len(value)))
            return _Val("int", src=f"_byte_len({_expr(arg.parts)})")
        # printf
        if not args:
            raise TemplateError("wrong number of args for printf: want at least 1 got 0", fn.offset)
        fmt = _const(args[0].parts) if args[0].is_string else None
        if fmt is None:
            raise TemplateError("printf format must be a constant string", fn.offset)
        return _Val(_STRING, _printf(fmt, args[1:], fn.offset))


def _printf(fmt: str, args: list[_Val], offset: int) -> list[_Part]:
    """``fmt.Sprintf`` compiled: literal runs and per-verb formatting of each operand."""
    out: list[_Part] = []
    i, n, argi = 0, len(fmt), 0
    while i < n:
        j = fmt.find("%", i)
        if j < 0:
            out.append(fmt[i:])
            break
        out.append(fmt[i:j])
        i = j + 1
        prec: int | None = None
        if i < n and fmt[i] == ".":
            k = i + 1
            while k < n and "0" <= fmt[k] <= "9":
                k += 1
            prec = int(fmt[i + 1 : k] or "0")
            i = k
        if i >= n:
            out.append("%!(NOVERB)")
            break
        verb = fmt[i]
        i += 1
        if verb == "%":
            out.append("%")
            continue
        if verb not in "sdvqf" or (prec is not None and verb != "f"):
            spec = fmt[j:i]
            raise TemplateError(
                f'unsupported printf verb "{spec}" (supported: %s %d %v %q %f %.Nf %%)', offset
            )
        if argi >= len(args):
            out.append(f"%!{verb}(MISSING)")
            continue
        out.extend(_format_verb(verb, prec, args[argi]))
        argi += 1
    if argi < len(args):
        out.append("%!(EXTRA ")
        for k, extra in enumerate(args[argi:]):
            out.append((", " if k else "") + extra.gotype + "=")
            out.extend(_str_parts(extra))
        out.append(")")
    return out


def _format_verb(verb: str, prec: int | None, arg: _Val) -> list[_Part]:
    """One printf verb applied to one operand, including Go's ``%!verb(type=value)`` on misuse."""
    kind = arg.gotype
    if verb == "v":
        return _str_parts(arg)
    if verb == "s" and kind == _STRING:
        return arg.parts
    if verb == "d" and kind in ("int", "int64"):
        return _str_parts(arg)
    if verb == "q" and kind == _STRING:
        return _call_str("_go_quote", arg.parts)
    if verb == "q" and kind in ("int", "int64"):
        return [_Code(f"_go_quote_rune({arg.src})")]
    if verb == "f" and kind == "float64":
        return [_Code(f"_go_fixed({arg.src}, {6 if prec is None else prec})")]
    # Bad verb: Go prints the operand with %v but keeps the precision flag.
    if prec is None:
        shown = _str_parts(arg)
    elif kind == _STRING:
        value = _const(arg.parts)
        shown = [value[:prec]] if value is not None else [_Code(f"({_expr(arg.parts)})[:{prec}]")]
    else:  # an integer with a precision: minimum digits
        shown = [_Code(f"_int_prec({arg.src}, {prec})")]
    return [f"%!{verb}({kind}=", *shown, ")"]


class RequestLogTemplate:
    """A request log template compiled once into a render function."""

    __slots__ = ("_render", "python_source", "source")

    def __init__(self, template: str) -> None:
        if not template:
            raise TemplateError("template is empty")
        self.source = template
        # Knative appends the newline to the template text before parsing it.
        text = template if template.endswith("\n") else template + "\n"
        try:
            parts, _, _ = _Compiler(text).parse_list()
            self.python_source = f"def _render(c):\n    return {_expr(parts)}\n"
            code = compile(self.python_source, "<request-log-template>", "exec")
        except (SyntaxError, RecursionError, MemoryError) as err:  # pathological nesting
            raise TemplateError(f"template nested too deeply ({type(err).__name__})") from None
        namespace: dict[str, object] = dict(_RUNTIME)
        exec(code, namespace)
        self._render = cast(Callable[[LogContext], str], namespace["_render"])

    def render(self, ctx: LogContext) -> str:
        """One log line for *ctx*. Raises only if *ctx* holds values of the wrong type."""
        return self._render(ctx)

    def __repr__(self) -> str:
        return f"RequestLogTemplate({self.source!r})"
