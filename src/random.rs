//! Random bytes from the operating system (`/dev/urandom`), as lowercase hex: the per-run
//! token of the HTTP endpoint and the run id in `/status`. Nothing else here: no seeding, no
//! generator state.

use std::io::Read;

/// `bytes` random bytes as `2 * bytes` lowercase hex digits.
pub fn hex(bytes: usize) -> std::io::Result<String> {
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    let mut out = String::with_capacity(bytes * 2);
    for b in buf {
        out.push(char::from_digit(u32::from(b >> 4), 16).unwrap_or('0'));
        out.push(char::from_digit(u32::from(b & 0xf), 16).unwrap_or('0'));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn hex_has_the_length_asked_for_and_differs_each_time() {
        let a = super::hex(32).unwrap();
        let b = super::hex(32).unwrap();
        assert_eq!(a.len(), 64);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_ne!(a, b);
    }
}
