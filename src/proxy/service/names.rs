//! The header names of backend responses, remembered per worker thread.
//!
//! A backend answers with the same header names, spelled the same way, response after response
//! (`Server`, `Date`, `Content-Type`, ...). `HeaderName::from_bytes` lowercases and classifies
//! each one; a name seen before, byte for byte, is found by a comparison and cloned instead.
//! The first [`KEEP`] names a thread sees are kept (a thread-local, so never contended); a
//! backend that keeps inventing names only costs the search.

use std::cell::RefCell;

use http::header::{HeaderName, InvalidHeaderName};

/// Names kept per worker thread.
const KEEP: usize = 32;

thread_local! {
    static NAMES: RefCell<Vec<(Box<[u8]>, HeaderName)>> = const { RefCell::new(Vec::new()) };
}

/// `raw` as a header name.
#[inline]
pub fn name(raw: &[u8]) -> Result<HeaderName, InvalidHeaderName> {
    let known = NAMES.with(|n| {
        n.borrow()
            .iter()
            .find(|(seen, _)| **seen == *raw)
            .map(|(_, h)| h.clone())
    });
    if let Some(h) = known {
        return Ok(h);
    }
    let h = HeaderName::from_bytes(raw)?;
    NAMES.with(|n| {
        let mut n = n.borrow_mut();
        if n.len() < KEEP {
            n.push((raw.into(), h.clone()));
        }
    });
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_the_same_the_second_time_and_a_bad_one_is_refused() {
        for raw in [
            "Content-Type",
            "content-type",
            "X-Custom",
            "Content-Type",
            "X-Custom",
        ] {
            let h = name(raw.as_bytes()).unwrap();
            assert_eq!(h, HeaderName::from_bytes(raw.as_bytes()).unwrap());
            assert_eq!(h.as_str(), raw.to_ascii_lowercase());
        }
        assert!(name(b"bad name").is_err());
        assert!(name(b"").is_err());
        for i in 0..2 * KEEP {
            let raw = format!("X-N{i}");
            assert_eq!(
                name(raw.as_bytes()).unwrap().as_str(),
                raw.to_ascii_lowercase()
            );
        }
        NAMES.with(|n| assert_eq!(n.borrow().len(), KEEP));
    }
}
