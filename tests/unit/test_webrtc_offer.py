"""What `webrtc.py` decides without a network: which offers are refused and why, and the advertised address."""

from __future__ import annotations

import pytest

from webrtc import OfferError, advertise, check_offer

OFFER = "\r\n".join(
    [
        "v=0",
        "o=- 1 1 IN IP4 0.0.0.0",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE 0 1",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111 0",
        "c=IN IP4 0.0.0.0",
        "a=mid:0",
        "a=sendrecv",
        "a=rtpmap:111 opus/48000/2",
        "a=rtpmap:0 PCMU/8000",
        "a=ice-ufrag:abcd",
        "a=ice-pwd:abcdefghijklmnopqrstuv",
        "a=fingerprint:sha-256 " + ":".join(["AB"] * 32),
        "a=setup:actpass",
        "m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
        "c=IN IP4 0.0.0.0",
        "a=mid:1",
        "a=sctp-port:5000",
        "",
    ]
)


def test_a_browser_like_offer_passes() -> None:
    check_offer(OFFER)


@pytest.mark.parametrize(
    ("sdp", "code"),
    [
        ("hello", "invalid_offer"),
        (OFFER.replace("m=audio 9 UDP/TLS/RTP/SAVPF 111 0", "m=video 9 UDP/TLS/RTP/SAVPF 96"), "invalid_offer"),
        (
            OFFER.replace("m=audio 9 UDP/TLS/RTP/SAVPF 111 0", "m=audio 9 UDP/TLS/RTP/SAVPF 0").replace(
                "a=rtpmap:111 opus/48000/2\r\n", ""
            ),
            "unsupported_codec",
        ),
    ],
)
def test_bad_offers_are_refused_saying_why(sdp: str, code: str) -> None:
    with pytest.raises(OfferError) as refused:
        check_offer(sdp)
    assert refused.value.code == code and refused.value.status == 400 and refused.value.param == "sdp"


def test_the_public_address_is_advertised_beside_each_host_candidate() -> None:
    answer = "v=0\r\na=candidate:abc 1 udp 2130706431 10.0.0.5 40000 typ host\r\na=end-of-candidates\r\n"
    advertised = advertise(answer, "203.0.113.7")
    assert "a=candidate:abc 1 udp 2130706431 10.0.0.5 40000 typ host" in advertised
    assert "a=candidate:abcp 1 udp 2130706431 203.0.113.7 40000 typ host" in advertised
    assert advertise(answer, None) == answer
