"""Request log templates: Go text/template subset, Go fmt/escaping parity, errors."""

from __future__ import annotations

import html
import json
import math
import re
import urllib.parse
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dataplane.reqlog import (
    DEFAULT_TEMPLATE,
    LogContext,
    LogRequest,
    LogResponse,
    LogRevision,
    RequestLogTemplate,
    TemplateError,
    fallback_line,
    trace_id_from_headers,
)


def make_ctx(
    *, request: dict[str, Any] | None = None, response: dict[str, Any] | None = None, **rest: Any
) -> LogContext:
    """A realistic context; keyword overrides per struct."""
    req = LogRequest(
        Method="GET",
        RequestURI="/api/items?id=42&sort=asc",
        ContentLength=0,
        UserAgent="curl/8.5.0",
        RemoteAddr="10.0.0.7:51234",
        Referer="",
        Proto="HTTP/1.1",
        Host="hello.default.example.com",
    )
    resp = LogResponse(Code=200, Size=512, Latency=0.5)
    rev = LogRevision(
        Name="hello-00001",
        Namespace="default",
        Service="hello",
        Configuration="hello",
        PodName="hello-00001-deployment-7d9c8-abcde",
        PodIP="10.244.0.12",
    )
    ctx = LogContext(Request=req, Response=resp, Revision=rev, TraceID="")
    ctx = replace(ctx, **rest)
    if request:
        ctx.Request = replace(req, **request)
    if response:
        ctx.Response = replace(resp, **response)
    return ctx


def render(template: str, **kw: Any) -> str:
    return RequestLogTemplate(template).render(make_ctx(**kw))


# ---- default template -------------------------------------------------------------------------


def test_default_template_renders_valid_json() -> None:
    ctx = make_ctx(
        request={
            "Method": "POST",
            "RequestURI": '/search?q="a b"&lang=日本語&path=C:\\tmp\\x<y>',
            "ContentLength": 1234,
            "UserAgent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36",
            "Referer": "https://example.com/?from=home&x=1",
            "Proto": "HTTP/2.0",
        },
        response={"Code": 201, "Size": 98765, "Latency": 0.001234},
        TraceID="4bf92f3577b34da6a3ce929d0e0e4736",
    )
    line = RequestLogTemplate(DEFAULT_TEMPLATE).render(ctx)
    assert line.endswith("}\n") and line.count("\n") == 1
    doc = json.loads(line)
    assert doc == {
        "httpRequest": {
            "requestMethod": "POST",
            "requestUrl": '/search?q="a b"&lang=日本語&path=C:\\tmp\\x<y>',
            "requestSize": "1234",
            "status": 201,
            "responseSize": "98765",
            "userAgent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36",
            "remoteIp": "10.0.0.7:51234",
            "serverIp": "10.244.0.12",
            "referer": "https://example.com/?from=home&x=1",
            "latency": "0.001234s",
            "protocol": "HTTP/2.0",
        },
        "traceId": "4bf92f3577b34da6a3ce929d0e0e4736",
    }


def test_default_template_exact_bytes() -> None:
    line = RequestLogTemplate(DEFAULT_TEMPLATE).render(make_ctx())
    assert line == (
        '{"httpRequest": {"requestMethod": "GET", '
        '"requestUrl": "/api/items?id\\u003D42\\u0026sort\\u003Dasc", "requestSize": "0", '
        '"status": 200, "responseSize": "512", "userAgent": "curl/8.5.0", '
        '"remoteIp": "10.0.0.7:51234", "serverIp": "10.244.0.12", "referer": "", '
        '"latency": "0.5s", "protocol": "HTTP/1.1"}, "traceId": ""}\n'
    )


def test_default_template_apostrophe_is_not_json_like_go() -> None:
    # Go's js escapes ' as \' which JSON does not accept; Knative has the same quirk.
    line = render(DEFAULT_TEMPLATE, request={"UserAgent": "it's"})
    assert '"userAgent": "it\\\'s"' in line
    with pytest.raises(json.JSONDecodeError):
        json.loads(line)


def test_template_is_reusable_across_contexts() -> None:
    t = RequestLogTemplate("{{.Request.Method}} {{.Response.Code}}")
    assert t.render(make_ctx()) == "GET 200\n"
    assert t.render(make_ctx(request={"Method": "PUT"}, response={"Code": 503})) == "PUT 503\n"


# ---- js / html / urlquery / len -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("plain text/path-1_2.3~", "plain text/path-1_2.3~"),
        ('say "hi"', 'say \\"hi\\"'),
        ("it's", "it\\'s"),
        ("C:\\dir", "C:\\\\dir"),
        ("<b>", "\\u003Cb\\u003E"),
        ("a=b&c=d", "a\\u003Db\\u0026c\\u003Dd"),
        ("\n\r\t", "\\u000A\\u000D\\u0009"),
        ("\x00\x1b\x1f", "\\u0000\\u001B\\u001F"),
        ("del\x7f", "del\x7f"),  # Go only checks runes >= 0x80 for printability
        ("héllo wörld 日本語", "héllo wörld 日本語"),
        ("emoji 😀", "emoji 😀"),
        ("nb\u00a0sp", "nb\\u00A0sp"),  # Zs other than ASCII space is not printable
        ("soft\u00adhyphen", "soft\\u00ADhyphen"),
        ("zw\u200bsp", "zw\\u200Bsp"),
        ("line\u2028sep", "line\\u2028sep"),
        ("bom\ufeff", "bom\\uFEFF"),
        ("tag\U000e0001", "tag\\uE0001"),  # %04X: more digits above the BMP
        ("é<\x01", "é\\u003C\\u0001"),
        ("raw\udcffbyte", "raw\udcffbyte"),  # an invalid UTF-8 byte is copied, as in Go
    ],
)
def test_js_matches_go_jsescapestring(value: str, expected: str) -> None:
    assert render("{{js .Request.UserAgent}}", request={"UserAgent": value}) == expected + "\n"


def test_html_matches_go_htmlescapestring() -> None:
    out = render("{{html .Request.UserAgent}}", request={"UserAgent": "<a href=\"x\">'&'\x00é"})
    assert out == "&lt;a href=&#34;x&#34;&gt;&#39;&amp;&#39;\ufffdé\n"
    assert render("{{html .Request.Method}}") == "GET\n"


def test_urlquery_matches_go_queryescape() -> None:
    out = render("{{urlquery .Request.UserAgent}}", request={"UserAgent": "a b&c=d/é~-_.+%"})
    assert out == "a+b%26c%3Dd%2F%C3%A9~-_.%2B%25\n"


def test_len_counts_utf8_bytes() -> None:
    assert render("{{len .Request.UserAgent}}", request={"UserAgent": "héllo"}) == "6\n"
    assert render('{{len "abc"}}|{{"日本" | len}}') == "3|6\n"


def test_functions_with_several_or_no_arguments_use_sprint() -> None:
    assert render("{{js .Response.Code .Response.Size}}") == "200 512\n"
    assert render('{{js .Request.Method "<" .Response.Code}}') == "GET\\u003C200\n"
    assert render("{{js}}{{print}}|") == "|\n"


# ---- float formatting (Go %v) -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("latency", "expected"),
    [
        (0.5, "0.5"),
        (0.001234, "0.001234"),
        (1e-05, "1e-05"),
        (12.0, "12"),
        (1e21, "1e+21"),
        (0.0, "0"),
        (-0.0, "-0"),
        (0.0001, "0.0001"),
        (0.00012345, "0.00012345"),
        (1.5e-07, "1.5e-07"),
        (123456.0, "123456"),
        (999999.5, "999999.5"),
        (1e6, "1e+06"),  # %v is %g with shortest precision: exponent form from 1e6 on
        (1234567.0, "1.234567e+06"),
        (1.5e15, "1.5e+15"),
        (1e16, "1e+16"),
        (0.1 + 0.2, "0.30000000000000004"),
        (1e100, "1e+100"),
        (-2.5, "-2.5"),
        (5e-324, "5e-324"),
        (1.7976931348623157e308, "1.7976931348623157e+308"),
        (math.inf, "+Inf"),
        (-math.inf, "-Inf"),
        (math.nan, "NaN"),
    ],
)
def test_float_prints_like_go_v(latency: float, expected: str) -> None:
    assert render("{{.Response.Latency}}", response={"Latency": latency}) == expected + "\n"


def test_integers_print_in_decimal() -> None:
    out = render(
        "{{.Request.ContentLength}} {{.Response.Code}} {{.Response.Size}}",
        request={"ContentLength": -1},
        response={"Size": 10**12},
    )
    assert out == "-1 200 1000000000000\n"


# ---- printf -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ('{{printf "%d %s %v" .Response.Code .Request.Method .Response.Latency}}', "200 GET 0.5"),
        ('{{printf "%v|%v" .Request.ContentLength .TraceID}}', "0|"),
        ('{{printf "%q" .Request.UserAgent}}', '"curl/8.5.0"'),
        ('{{printf "%q" "a\\"b\\n\\x01é\\u00a0\\x7f"}}', '"a\\"b\\n\\x01é\\u00a0\\x7f"'),
        ('{{printf "%q" .Response.Code}}', "'È'"),
        ('{{printf "%f" .Response.Latency}}', "0.500000"),
        ('{{printf "%.2f" .Response.Latency}}', "0.50"),
        ('{{printf "%.f" .Response.Latency}}', "0"),
        ('{{printf "100%%"}}', "100%"),
        ('{{printf "%s=%q" "k" "v"}}', 'k="v"'),
        ('{{printf "%d" .Request.Method}}', "%!d(string=GET)"),
        ('{{printf "%s" .Response.Code}}', "%!s(int=200)"),
        ('{{printf "%s" .Request.ContentLength}}', "%!s(int64=0)"),
        ('{{printf "%d" .Response.Latency}}', "%!d(float64=0.5)"),
        ('{{printf "%f" .Response.Size}}', "%!f(int=512)"),
        ('{{printf "%q" .Response.Latency}}', "%!q(float64=0.5)"),
        ('{{printf "%.1f" .Request.Method}}', "%!f(string=G)"),
        ('{{printf "%.5f" .Response.Code}}', "%!f(int=00200)"),
        ('{{printf "%s %s" .Request.Method}}', "GET %!s(MISSING)"),
        (
            '{{printf "%s" .Request.Method .Response.Code .Response.Latency}}',
            "GET%!(EXTRA int=200, float64=0.5)",
        ),
        ('{{printf "50%"}}', "50%!(NOVERB)"),
        ('{{.Request.Method | printf "%s-%s" "x"}}', "x-GET"),
        ('{{"%d" | printf}}', "%!d(MISSING)"),
    ],
)
def test_printf(template: str, expected: str) -> None:
    assert render(template) == expected + "\n"


@pytest.mark.parametrize(
    ("latency", "fmt", "expected"),
    [
        (2.675, "%.2f", "2.67"),  # binary value is just below 2.675
        (0.5, "%.0f", "0"),  # exact ties round to even
        (1.5, "%.0f", "2"),
        (2.5, "%.0f", "2"),
        (0.0005, "%.3f", "0.001"),
        (-0.01, "%.1f", "-0.0"),
        (1e21, "%f", "1000000000000000000000.000000"),
        (math.inf, "%f", "+Inf"),
        (math.nan, "%.2f", "NaN"),
    ],
)
def test_printf_fixed_rounding(latency: float, fmt: str, expected: str) -> None:
    template = f'{{{{printf "{fmt}" .Response.Latency}}}}'
    assert render(template, response={"Latency": latency}) == expected + "\n"


# ---- pipelines, literals, if/else, trim markers ----------------------------------------------


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{{.Request.RequestURI | js}}", "/api/items?id\\u003D42\\u0026sort\\u003Dasc"),
        ("{{.Request.Method | len}}", "3"),
        ("{{.Request.Method | js | html}}", "GET"),
        ('{{"<&>" | js | html}}', "\\u003C\\u0026\\u003E"),
        ("{{js (print .Response.Code .Response.Size)}}", "200 512"),
        ('{{print "a" .Response.Code .Response.Size "b" .Response.Latency}}', "a200 512b0.5"),
        (
            "{{print .Response.Latency .Response.Code .Request.Method .Request.Proto}}",
            "0.5 200GETHTTP/1.1",
        ),
        ('{{print "tab\\tA\\x41\\u00e9\\101\\\\"}}', "tab\tAAéA\\"),
        ('{{print "\\xc3\\xa9"}}', "é"),  # \x escapes are bytes, as in Go
        ('{{print `raw\\n"quoted"`}}', 'raw\\n"quoted"'),
        ("{{ .Request.Method }}", "GET"),
        ("{{.Request.Method}}}", "GET}"),
        ('{{print "}}"}}', "}}"),
    ],
)
def test_pipelines_and_literals(template: str, expected: str) -> None:
    assert render(template) == expected + "\n"


IF_CHAIN = (
    "{{if .Request.Referer}}ref={{.Request.Referer}}"
    "{{else if .Response.Size}}size={{.Response.Size}}"
    "{{else}}none{{end}}"
)


@pytest.mark.parametrize(
    ("kw", "expected"),
    [
        ({"request": {"Referer": "https://x/"}}, "ref=https://x/"),
        ({}, "size=512"),
        ({"response": {"Size": 0}}, "none"),
    ],
)
def test_if_else_if_else(kw: dict[str, Any], expected: str) -> None:
    assert render(IF_CHAIN, **kw) == expected + "\n"


@pytest.mark.parametrize(
    ("latency", "expected"),
    [(0.0, "fast"), (-0.0, "fast"), (0.25, "slow"), (math.nan, "slow")],
)
def test_if_float_truthiness(latency: float, expected: str) -> None:
    template = "{{if .Response.Latency}}slow{{else}}fast{{end}}"
    assert render(template, response={"Latency": latency}) == expected + "\n"


def test_if_variants() -> None:
    assert render("{{if .TraceID}}t{{end}}x") == "x\n"
    assert render("{{if .TraceID}}t{{end}}x", TraceID="abc") == "tx\n"
    assert render("{{if js .Request.Referer}}y{{else}}n{{end}}") == "n\n"
    assert render("{{if len .Request.Method}}{{if .TraceID}}a{{else}}b{{end}}{{end}}") == "b\n"
    assert render('{{if "x"}}yes{{else}}no{{end}}') == "yes\n"
    assert render('{{if ""}}yes{{else}}no{{end}}') == "no\n"
    assert render("{{if .Response.Code -}}\n  ok  {{- else}}ko{{end}}") == "ok\n"


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("a  {{- .Request.Method -}}  b", "aGETb\n"),
        ("a \t\r\n{{- .Request.Method}} b", "aGET b\n"),
        ("a {{.Request.Method -}} \n b", "a GETb\n"),
        ("a\n  {{- /* comment */ -}}\n  b", "ab\n"),
        ("a {{/* multi\nline */}} b", "a  b\n"),
        ("a\u00a0{{- .Request.Method}}", "a\u00a0GET\n"),  # only Go's four space chars trim
        ("{{.Request.Method}}  {{- /* x */}}", "GET\n"),
    ],
)
def test_trim_markers_and_comments(template: str, expected: str) -> None:
    assert render(template) == expected


# ---- trailing newline -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("abc", "abc\n"),
        ("abc\n", "abc\n"),
        ("abc\n\n", "abc\n\n"),
        (" ", " \n"),
        ("{{.Request.Method}}", "GET\n"),
        # Knative appends "\n" to the template source, so a final -}} trims it away (as in Go).
        ("x{{.Request.Method -}}", "xGET"),
        ("{{.Request.Method -}}\n", "GET"),
    ],
)
def test_trailing_newline_rule(template: str, expected: str) -> None:
    assert render(template) == expected


def test_empty_template_is_an_error() -> None:
    with pytest.raises(TemplateError, match="empty"):
        RequestLogTemplate("")


# ---- errors -----------------------------------------------------------------------------------


def test_error_message_names_problem_and_offset() -> None:
    with pytest.raises(TemplateError) as info:
        RequestLogTemplate("x{{range .Request.Method}}{{end}}")
    assert str(info.value) == 'request log template: unsupported action "range" at offset 3'
    assert info.value.offset == 3
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{{range .TraceID}}x{{end}}", 'unsupported action "range"'),
        ("{{with .TraceID}}x{{end}}", 'unsupported action "with"'),
        ('{{define "x"}}y{{end}}', 'unsupported action "define"'),
        ('{{template "x"}}', 'unsupported action "template"'),
        ('{{block "x" .}}y{{end}}', 'unsupported action "block"'),
        ("{{break}}", 'unsupported action "break"'),
        ("{{continue}}", 'unsupported action "continue"'),
        ("{{if .TraceID}}a{{else with .TraceID}}b{{end}}", 'unsupported action "else with"'),
        ("{{$x := .TraceID}}", 'unsupported variable "$x"'),
        ("{{$}}", 'unsupported variable "$"'),
        ("{{.TraceID | printf $fmt}}", 'unsupported variable "$fmt"'),
        ("{{x := 1}}", 'function "x" not defined'),  # as in Go
        ("{{js := .TraceID}}", "unsupported variable declaration"),
        ('{{printf "%d" 5}}', "unsupported number literal"),
        ("{{-3}}", "unsupported number literal"),
        ("{{.5}}", "unsupported number literal"),
        ("{{js 1e3}}", "unsupported number literal"),
        ("{{'a'}}", "unsupported character constant"),
        ("{{if true}}x{{end}}", 'unsupported constant "true"'),
        ("{{print nil}}", 'unsupported constant "nil"'),
        ('{{if eq .TraceID "x"}}y{{end}}', 'unsupported function "eq"'),
        ("{{and .TraceID .TraceID}}", 'unsupported function "and"'),
        ("{{not .TraceID}}", 'unsupported function "not"'),
        ("{{index .TraceID 0}}", 'unsupported function "index"'),
        ("{{println .TraceID}}", 'unsupported function "println"'),
        ("{{call .TraceID}}", 'unsupported function "call"'),
        ("{{upper .TraceID}}", 'function "upper" not defined'),
        ("{{.}}", 'unsupported use of "."'),
        ("{{print .}}", 'unsupported use of "."'),
        ("{{}}", "missing value for command"),
        ("{{ }}", "missing value for command"),
        ("{{if}}x{{end}}", "missing value for if"),
        ("{{.TraceID", "unclosed action"),
        ("{{/* comment", "unclosed comment"),
        ("{{/* c */ .TraceID}}", "comment ends before closing delimiter"),
        ("{{ /* c */ }}", "unexpected '/'"),
        ("{{else}}", "unexpected {{else}}"),
        ("x{{end}}", "unexpected {{end}}"),
        ("{{if .TraceID}}x", "missing {{end}} for {{if}}"),
        ("{{if .TraceID}}x{{else}}y", "missing {{end}} for {{else}}"),
        ("{{if .TraceID}}a{{else}}b{{else}}c{{end}}", "expected {{end}}; found {{else}}"),
        ("{{if .TraceID}}a{{else .TraceID}}b{{end}}", "unexpected operand after else"),
        ("{{if .TraceID}}a{{end .TraceID}}", "unexpected operand after end"),
        ('{{printf "%x" .Response.Code}}', 'unsupported printf verb "%x"'),
        ('{{printf "%5d" .Response.Code}}', 'unsupported printf verb "%5"'),
        ('{{printf "%.2s" .TraceID}}', 'unsupported printf verb "%.2s"'),
        ("{{printf .Request.Method}}", "printf format must be a constant string"),
        ("{{printf}}", "wrong number of args for printf"),
        ("{{len .Response.Code}}", "len of type int"),
        ("{{len .Response.Latency}}", "len of type float64"),
        ("{{len}}", "wrong number of args for len: want 1 got 0"),
        ("{{.TraceID .TraceID}}", "can't give argument to non-function"),
        ("{{.TraceID | .TraceID}}", "non executable command in pipeline stage 2"),
        ('{{.TraceID | "x"}}', "non executable command in pipeline stage 2"),
        ("{{.TraceID |}}", "missing command in pipeline"),
        ("{{| js}}", "missing command in pipeline"),
        ("{{js (.TraceID}}", "unclosed left paren"),
        ("{{.TraceID)}}", "unexpected right paren"),
        ('{{print "\\q"}}', "unknown escape sequence \\q"),
        ('{{print "\\\'"}}', "unknown escape sequence \\'"),
        ('{{print "\\x4"}}', "invalid \\x escape"),
        ('{{print "\\ud800"}}', "invalid \\u escape"),
        ('{{print "abc}}', "unterminated quoted string"),
        ('{{print "a\nb"}}', "unterminated quoted string"),
        ("{{print `abc}}", "unterminated raw quoted string"),
        ("{{.TraceID-}}", "unexpected '-' after '.TraceID'"),
        ("{{js.TraceID}}", "unexpected '.' after 'js'"),
        ("{{.Request.}}", "unexpected '.' after '.Request'"),
        ("{{.TraceID, .TraceID}}", "unexpected ','"),
    ],
)
def test_unsupported_or_malformed_raises(template: str, message: str) -> None:
    with pytest.raises(TemplateError) as info:
        RequestLogTemplate(template)
    text = str(info.value)
    assert text.startswith("request log template: ")
    assert message in text


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{{.Request.Foo}}", 'unknown field ".Request.Foo" (fields of .Request: Method, '),
        ("{{.Request.URL.Path}}", 'unknown field ".Request.URL.Path"'),
        ("{{.Foo}}", 'unknown field ".Foo" (fields of .: Request, Response, Revision, TraceID)'),
        ("{{.Request.Method.Len}}", 'unknown field ".Request.Method.Len" (.Request.Method is a'),
        ("{{if .Revision.Nam}}x{{end}}", 'unknown field ".Revision.Nam"'),
        ("{{js .Response.Status}}", 'unknown field ".Response.Status"'),
        ("{{.Request}}", 'field ".Request" is a struct; use one of its fields: Method,'),
        ("{{.Response | js}}", 'field ".Response" is a struct'),
    ],
)
def test_unknown_field_raises_at_compile_time(template: str, message: str) -> None:
    with pytest.raises(TemplateError, match=re.escape(message)):
        RequestLogTemplate(template)


def test_absurd_nesting_is_a_template_error() -> None:
    deep = "{{if .TraceID}}" * 400 + "x" + "{{end}}" * 400
    with pytest.raises(TemplateError, match="nested too deeply"):
        RequestLogTemplate(deep)


# ---- fallback line and trace id ---------------------------------------------------------------


def test_fallback_line() -> None:
    assert fallback_line("GET", 200, 0.5, "http://h/p?q=1") == (
        "Invalid request log template: method: GET, response code: 200, latency: 0.5, "
        "url: http://h/p?q=1\n"
    )
    assert "latency: 1e-05," in fallback_line("POST", 500, 1e-05, "/")


@pytest.mark.parametrize(
    ("traceparent", "b3", "expected"),
    [
        (
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            None,
            "4bf92f3577b34da6a3ce929d0e0e4736",
        ),
        (
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"80f198ee56343ba864fe8b2a57d3eff7",
            "4bf92f3577b34da6a3ce929d0e0e4736",
        ),
        (None, b"80f198ee56343ba864fe8b2a57d3eff7", "80f198ee56343ba864fe8b2a57d3eff7"),
        (None, b"463ac35c9f6413ad", "463ac35c9f6413ad"),
        (b"invalid", None, ""),
        (b"00", None, ""),
        (b"invalid", b"463ac35c9f6413ad", "463ac35c9f6413ad"),
        (b"", b"", ""),
        (None, None, ""),
        (b"00-", None, ""),
    ],
)
def test_trace_id_from_headers(traceparent: bytes | None, b3: bytes | None, expected: str) -> None:
    assert trace_id_from_headers(traceparent, b3) == expected


# ---- properties -------------------------------------------------------------------------------

JS_TEMPLATE = RequestLogTemplate("{{js .Request.UserAgent}}")
ESCAPE_PAIR = re.compile(r"\\.", re.DOTALL)


@given(st.text())
def test_js_output_has_no_raw_specials(value: str) -> None:
    out = JS_TEMPLATE.render(make_ctx(request={"UserAgent": value}))[:-1]
    bare = ESCAPE_PAIR.sub("", out)  # drop every backslash escape pair
    assert not set(bare) & set("\\\"'<>&=")
    assert all(ch >= " " for ch in bare)


@given(
    st.text(
        st.characters(max_codepoint=0xFFFF, blacklist_categories=("Cs",), blacklist_characters="'")
    )
)
def test_js_output_is_a_json_string_body(value: str) -> None:
    out = JS_TEMPLATE.render(make_ctx(request={"UserAgent": value}))[:-1]
    assert json.loads(f'"{out}"') == value


@given(st.text(min_size=1).filter(lambda s: "{{" not in s))
def test_text_only_template_renders_itself(text: str) -> None:
    expected = text if text.endswith("\n") else text + "\n"
    assert render(text) == expected


FLOAT_TEMPLATE = RequestLogTemplate("{{.Response.Latency}}")


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_float_output_round_trips_and_uses_go_layout(x: float) -> None:
    out = FLOAT_TEMPLATE.render(make_ctx(response={"Latency": x}))[:-1]
    assert float(out) == x
    assert not out.endswith(".0")
    exponent_form = x != 0 and not 1e-4 <= abs(x) < 1e6
    assert ("e" in out) == exponent_form
    if exponent_form:
        assert re.fullmatch(r"-?\d(\.\d+)?e[+-]\d{2,3}", out)


URLQUERY_TEMPLATE = RequestLogTemplate("{{urlquery .Request.UserAgent}}")
HTML_TEMPLATE = RequestLogTemplate("{{html .Request.UserAgent}}")


@settings(max_examples=50)
@given(st.text())
def test_urlquery_and_html_agree_with_python_equivalents(value: str) -> None:
    ctx = make_ctx(request={"UserAgent": value})
    assert URLQUERY_TEMPLATE.render(ctx)[:-1] == urllib.parse.quote_plus(value, safe="")
    assert html.unescape(HTML_TEMPLATE.render(ctx)[:-1]) == value.replace("\x00", "\ufffd")
