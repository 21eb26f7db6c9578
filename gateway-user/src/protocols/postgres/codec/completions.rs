//! Empty-bodied backend acknowledgements (ParseComplete '1' … EmptyQueryResponse 'I').
use super::wire::empty_message;

empty_message!(
    /// ParseComplete: the Parse succeeded.
    ParseComplete,
    b'1'
);
empty_message!(
    /// BindComplete: the Bind succeeded.
    BindComplete,
    b'2'
);
empty_message!(
    /// CloseComplete: the Close succeeded.
    CloseComplete,
    b'3'
);
empty_message!(
    /// NoData: the described statement or portal returns no rows.
    NoData,
    b'n'
);
empty_message!(
    /// PortalSuspended: Execute's row limit was reached.
    PortalSuspended,
    b's'
);
empty_message!(
    /// EmptyQueryResponse: the query string was empty.
    EmptyQueryResponse,
    b'I'
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocols::postgres::codec::{Encode, tests::frame};
    use bytes::Bytes;

    #[test]
    fn captures_and_malformed() {
        fn check<M: Encode>(
            m: M,
            tag: u8,
            parse: fn(&Bytes) -> Result<M, crate::protocols::postgres::codec::CodecError>,
        ) {
            let bytes = m.to_bytes().unwrap();
            assert_eq!(&bytes[..], &[tag, 0, 0, 0, 4]);
            assert!(parse(frame(&bytes).body()).is_ok());
            assert!(parse(&Bytes::from_static(b"\0")).is_err());
        }
        check(ParseComplete, b'1', ParseComplete::parse);
        check(BindComplete, b'2', BindComplete::parse);
        check(CloseComplete, b'3', CloseComplete::parse);
        check(NoData, b'n', NoData::parse);
        check(PortalSuspended, b's', PortalSuspended::parse);
        check(EmptyQueryResponse, b'I', EmptyQueryResponse::parse);
    }
}
