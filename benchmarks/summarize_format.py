"""Number formatting shared by the summarize modules (one place, so every table prints alike)."""


def fmt(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)
