"""Every time Django itself shows (the admin's lists and read-only fields) says its zone:
"Dec. 5, 2026, 6:21 a.m. UTC", or the event's zone where a page activates it. Django's own
English formats, with the zone's abbreviation added (format character T)."""

DATETIME_FORMAT = "N j, Y, P T"
SHORT_DATETIME_FORMAT = "m/d/Y P T"
