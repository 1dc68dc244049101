//! The current HTTP-date (RFC 9110 §5.6.7) for answers that lack a Date:
//! formatted once a second per worker thread, so dating an answer costs a
//! clock read and a copy.

use hyper::header::HeaderValue;

/// Now as an IMF-fixdate, e.g. `Sun, 06 Nov 1994 08:49:37 GMT`.
pub fn now() -> Option<HeaderValue> {
    thread_local! {
        static DATE: std::cell::RefCell<Option<(u64, HeaderValue)>> = const { std::cell::RefCell::new(None) };
    }
    let now = std::time::SystemTime::now();
    let second = now.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with(|cached| {
        let mut cached = cached.borrow_mut();
        if cached.as_ref().is_none_or(|(at, _)| *at != second) {
            let value = HeaderValue::from_str(&httpdate::fmt_http_date(now)).ok()?;
            *cached = Some((second, value));
        }
        cached.as_ref().map(|(_, v)| v.clone())
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_imf_fixdate_of_now() {
        let date = super::now().expect("a date");
        let text = date.to_str().expect("ascii");
        assert_eq!(text.len(), 29, "{text}");
        assert!(text.ends_with(" GMT"), "{text}");
        let parsed = httpdate::parse_http_date(text).expect("parses back");
        let off = std::time::SystemTime::now().duration_since(parsed).unwrap_or_default();
        assert!(off < std::time::Duration::from_secs(2), "{off:?}");
    }
}
