//! Terminate (F 'X'): the client is closing the connection.
use super::wire::empty_message;

empty_message!(
    /// Terminate: sent before a clean close; the gateway also sends it
    /// upstream when the client goes away.
    Terminate,
    b'X'
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocols::postgres::codec::{Encode, tests::frame};
    use bytes::Bytes;

    #[test]
    fn capture_and_malformed() {
        assert_eq!(&Terminate.to_bytes().unwrap()[..], b"X\0\0\0\x04");
        assert_eq!(
            Terminate::parse(frame(b"X\0\0\0\x04").body()).unwrap(),
            Terminate
        );
        assert!(Terminate::parse(&Bytes::from_static(b"\0")).is_err());
    }
}
