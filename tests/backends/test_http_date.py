"""The Date header the wsgiref backend writes matches the stdlib's format."""

from email.utils import formatdate

from juggler.backends.http11 import http_date


def test_http_date_matches_email_utils_across_the_calendar():
    for seconds in range(0, 2**32, 2**32 // 5000):
        assert http_date(seconds) == formatdate(seconds, usegmt=True)
