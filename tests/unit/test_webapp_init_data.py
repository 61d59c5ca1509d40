"""initData of Telegram Mini Apps: the published test vector validates, anything else is refused."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

import pytest
from clarion.telegram.webapp import InitDataRefused, check_init_data, sign_init_data, webapp_secret

pytestmark = pytest.mark.unit

#: The example of the Telegram Mini Apps documentation (telegram-mini-apps/init-data-golang's README,
#: apps/docs/packages/init-data-golang.md): real initData of a real bot, with its token. It carries a
#: `signature`, which is part of the data-check string.
TOKEN = "7342037359:AAHI25ES9xCOMPokpYoz-p8XVrZUdygo2J4"
VECTOR = (
    "user=%7B%22id%22%3A279058397%2C%22first_name%22%3A%22Vladislav%20%2B%20-%20%3F%20%5C%2F%22%2C%22"
    "last_name%22%3A%22Kibenko%22%2C%22username%22%3A%22vdkfrost%22%2C%22language_code%22%3A%22ru%22%2C"
    "%22is_premium%22%3Atrue%2C%22allows_write_to_pm%22%3Atrue%2C%22photo_url%22%3A%22https%3A%5C%2F%5C"
    "%2Ft.me%5C%2Fi%5C%2Fuserpic%5C%2F320%5C%2F4FPEE4tmP3ATHa57u6MqTDih13LTOiMoKoLDRG4PnSA.svg%22%7D"
    "&chat_instance=8134722200314281151&chat_type=private&auth_date=1733509682"
    "&signature=TYJxVcisqbWjtodPepiJ6ghziUL94-KNpG8Pau-X7oNNLNBM72APCpi_RKiUlBvcqo5L-LAxIc3dnTzcZX_PDg"
    "&hash=a433d8f9847bd6addcc563bff7cc82c89e97ea0d90c11fe5729cae6796a36d73")
SIGNED_AT = datetime.fromtimestamp(1733509682, UTC)
DAY = 86400.0


def test_the_published_test_vector_validates_and_gives_the_user() -> None:
    data = check_init_data(VECTOR, webapp_secret(TOKEN), max_age=DAY, now=SIGNED_AT + timedelta(hours=1))

    assert (data.user_id, data.first_name, data.last_name, data.username, data.language_code) == (
        279058397, "Vladislav + - ? /", "Kibenko", "vdkfrost", "ru")
    assert data.auth_date == SIGNED_AT and data.start_param is None


def _refusal(raw: str, token: str = TOKEN, now: datetime = SIGNED_AT) -> str:
    with pytest.raises(InitDataRefused) as refused:
        check_init_data(raw, webapp_secret(token), max_age=DAY, now=now)
    return refused.value.reason


def test_a_flipped_byte_anywhere_is_a_bad_hash() -> None:
    flipped_hash = VECTOR[:-1] + ("4" if VECTOR[-1] != "4" else "5")
    flipped_data = VECTOR.replace("Kibenko", "Kibenkp")
    assert _refusal(flipped_hash) == "bad hash"
    assert _refusal(flipped_data) == "bad hash"


def test_another_bots_token_is_a_bad_hash() -> None:
    assert _refusal(VECTOR, token="7342037359:AAHI25ES9xCOMPokpYoz-p8XVrZUdygo2J5") == "bad hash"


def test_a_stale_auth_date_is_refused() -> None:
    assert _refusal(VECTOR, now=SIGNED_AT + timedelta(seconds=DAY + 1)) == "stale auth_date"


def test_a_missing_hash_is_refused() -> None:
    assert _refusal(VECTOR.rpartition("&hash=")[0]) == "missing hash"
    assert _refusal(VECTOR.rpartition("&hash=")[0] + "&hash=") == "missing hash"


def test_signed_data_without_a_user_or_auth_date_is_refused() -> None:
    secret = webapp_secret(TOKEN)
    fields = {"auth_date": "1733509682", "query_id": "AAH"}
    raw = urlencode({**fields, "hash": sign_init_data(fields, secret)})
    assert _refusal(raw) == "missing auth_date or user"


def test_a_repeated_field_is_refused() -> None:
    assert _refusal(VECTOR + "&chat_type=group") == "a field appears twice"


def test_data_signed_with_the_derived_key_round_trips_with_its_start_parameter() -> None:
    secret = webapp_secret("123:abc")
    fields = {"auth_date": str(int(SIGNED_AT.timestamp())), "start_param": "t42",
              "user": '{"id":7,"first_name":"Ada","language_code":"en"}'}
    raw = urlencode({**fields, "hash": sign_init_data(fields, secret)})
    data = check_init_data(raw, secret, max_age=60, now=SIGNED_AT)
    assert (data.user_id, data.display_name, data.start_param) == (7, "Ada", "t42")
