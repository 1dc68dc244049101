//! Request and response heads: no panic on any bytes, and a request head
//! the proxy accepts is rewritten into one that parses again with the same
//! framing and a single Host.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};

use libfuzzer_sys::fuzz_target;
use vipd::proxy::codec::head::{insert_host, parse_request, parse_response, HeadError, ResponseContext, Scheme};

const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7));

fuzz_target!(|data: &[u8]| {
    let mut out = Vec::new();
    if let Ok(Some(r)) = parse_request(data, CLIENT, Scheme::Http, &mut out) {
        assert!(r.head_len <= data.len());
        if r.needs_host {
            insert_host(&mut out, "192.0.2.10:80");
        }
        let mut again = Vec::new();
        // Up to 5 fields are added (Host, X-Forwarded-*, the framing): a
        // head near MAX_HEADERS may outgrow the proxy's own limit.
        let r2 = match parse_request(&out, CLIENT, Scheme::Http, &mut again) {
            Err(HeadError::TooManyHeaders) => return,
            parsed => parsed.expect("rewritten head parses").expect("complete"),
        };
        assert_eq!(r2.framing, r.framing);
        assert_eq!(r2.head_len, out.len());
        let host_fields = out.windows(7).filter(|w| w.eq_ignore_ascii_case(b"\r\nhost:")).count();
        assert!(host_fields <= 1, "{host_fields} Host fields");
    }
    for bits in 0..32u8 {
        let ctx = ResponseContext {
            is_head: bits & 1 != 0,
            client_http10: bits & 2 != 0,
            close_client: bits & 4 != 0,
            upgrade: bits & 8 != 0,
            body_unfinished: bits & 16 != 0,
        };
        if let Ok(Some(r)) = parse_response(data, ctx, &mut out) {
            assert!(r.head_len <= data.len());
            assert!((100..600).contains(&r.status));
        }
    }
});
