"""SMS length: which encoding a body needs and how many segments the carrier will bill."""
from __future__ import annotations

# GSM 03.38 basic character set, and the extension table (each costs two septets).
GSM7_BASIC = set(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENDED = set("^{}\\[~]|€\f")
GSM7 = "GSM-7"
UCS2 = "UCS-2"


def sms_encoding(text: str) -> str:
    return GSM7 if all(c in GSM7_BASIC or c in GSM7_EXTENDED for c in text) else UCS2


def sms_segments(text: str) -> tuple[str, int]:
    """(encoding, segment count). One segment holds 160 GSM-7 septets or 70 UCS-2 units;
    a multipart message loses room to its header: 153 and 67 per segment."""
    encoding = sms_encoding(text)
    if encoding == GSM7:
        units = sum(2 if c in GSM7_EXTENDED else 1 for c in text)
        single, multi = 160, 153
    else:
        units = len(text.encode("utf-16-le")) // 2  # characters outside the BMP take two
        single, multi = 70, 67
    if units <= single:
        return encoding, 1
    return encoding, -(-units // multi)
