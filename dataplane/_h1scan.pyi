# The C twin of dataplane.h1scan.scan_py (see its docstring).
def scan(
    data: bytes, names: list[bytes], wanted: bytearray, max_fields: int
) -> list[int] | None: ...
