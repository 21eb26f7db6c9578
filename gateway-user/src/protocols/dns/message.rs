//! DNS messages as the forwarder needs them: the one question of a query, refusals, and the addresses an answer gives (hickory-proto does the wire format).
use std::net::IpAddr;

use hickory_proto::{
    op::{Message, MessageType, OpCode, ResponseCode},
    rr::RData,
};

/// The single question a job asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    /// Lower-case, without the trailing dot.
    pub name: String,
    /// `A`, `AAAA`, `TXT`…
    pub qtype: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    #[error("malformed DNS message: {0}")]
    Malformed(String),
    #[error("{0}")]
    Unsupported(String),
}

/// Parses a job's query; anything but a standard query with exactly one
/// question is refused (the forwarder decides per name).
pub fn parse_query(bytes: &[u8]) -> Result<(Message, Question), DnsError> {
    let message = Message::from_vec(bytes).map_err(|e| DnsError::Malformed(e.to_string()))?;
    if message.message_type() != MessageType::Query {
        return Err(DnsError::Unsupported("a response, not a query".to_owned()));
    }
    if message.op_code() != OpCode::Query {
        return Err(DnsError::Unsupported(format!(
            "opcode {:?} (only standard queries are forwarded)",
            message.op_code()
        )));
    }
    if message.queries().len() != 1 {
        return Err(DnsError::Unsupported(format!(
            "{} questions in one query (exactly one is forwarded)",
            message.queries().len()
        )));
    }
    let query = &message.queries()[0];
    let name = query
        .name()
        .to_ascii()
        .trim_end_matches('.')
        .to_ascii_lowercase();
    let qtype = query.query_type().to_string();
    Ok((message, Question { name, qtype }))
}

/// An answer to `query` with `code` and nothing else (NXDOMAIN, REFUSED,
/// SERVFAIL, FORMERR).
pub fn refusal(query: &Message, code: ResponseCode) -> Vec<u8> {
    let mut answer = Message::new();
    answer
        .set_id(query.id())
        .set_message_type(MessageType::Response)
        .set_op_code(query.op_code())
        .set_recursion_desired(query.recursion_desired())
        .set_recursion_available(true)
        .set_response_code(code);
    for q in query.queries() {
        answer.add_query(q.clone());
    }
    // Only fails for names too long to encode, which a parsed query's
    // question cannot be.
    answer.to_vec().unwrap_or_default()
}

/// Longest answer sent over UDP: the classic limit, which every client
/// accepts; a longer one is sent truncated so the client asks over TCP.
pub const MAX_UDP_ANSWER: usize = 512;

/// `answer` as it may travel over UDP: itself, or (too long) an empty
/// answer with the TC bit so the client retries over TCP.
pub fn for_udp(query: &Message, answer: Vec<u8>) -> Vec<u8> {
    if answer.len() <= MAX_UDP_ANSWER {
        return answer;
    }
    let mut m = match Message::from_vec(&refusal(query, ResponseCode::NoError)) {
        Ok(m) => m,
        Err(_) => return refusal(query, ResponseCode::ServFail),
    };
    m.set_truncated(true);
    m.to_vec().unwrap_or_default()
}

/// The upstream's answer, checked against the query it answers.
pub struct Answer {
    pub bytes: Vec<u8>,
    pub code: String,
    /// (address, TTL seconds) of every A/AAAA record.
    pub addresses: Vec<(IpAddr, u32)>,
}

pub fn parse_answer(query: &Message, bytes: Vec<u8>) -> Result<Answer, DnsError> {
    let message = Message::from_vec(&bytes).map_err(|e| DnsError::Malformed(e.to_string()))?;
    if message.id() != query.id()
        || message.message_type() != MessageType::Response
        || message.queries() != query.queries()
    {
        return Err(DnsError::Malformed(
            "the upstream's answer is for another question".to_owned(),
        ));
    }
    let addresses = message
        .answers()
        .iter()
        .filter_map(|r| match r.data() {
            RData::A(a) => Some((IpAddr::V4(a.0), r.ttl())),
            RData::AAAA(a) => Some((IpAddr::V6(a.0), r.ttl())),
            _ => None,
        })
        .collect();
    Ok(Answer {
        code: message.response_code().to_string(),
        bytes,
        addresses,
    })
}

#[cfg(test)]
mod tests {
    use std::{net::Ipv4Addr, str::FromStr};

    use hickory_proto::{
        op::Query,
        rr::{Name, Record, RecordType, rdata::A},
    };

    use super::*;

    fn query(name: &str) -> Message {
        let mut m = Message::new();
        m.set_id(77)
            .set_message_type(MessageType::Query)
            .set_recursion_desired(true)
            .add_query(Query::query(Name::from_str(name).unwrap(), RecordType::A));
        m
    }

    #[test]
    fn a_query_names_its_question_and_gets_refusals_and_answers() {
        let q = query("DB.Internal.");
        let (parsed, question) = parse_query(&q.to_vec().unwrap()).unwrap();
        assert_eq!(
            question,
            Question {
                name: "db.internal".into(),
                qtype: "A".into()
            }
        );
        let refused = Message::from_vec(&refusal(&parsed, ResponseCode::NXDomain)).unwrap();
        assert_eq!(refused.id(), 77);
        assert_eq!(refused.response_code(), ResponseCode::NXDomain);
        assert_eq!(refused.queries(), parsed.queries());

        let mut answer = refusal(&parsed, ResponseCode::NoError);
        let mut m = Message::from_vec(&answer).unwrap();
        m.add_answer(Record::from_rdata(
            Name::from_str("db.internal.").unwrap(),
            300,
            RData::A(A(Ipv4Addr::new(127, 0, 0, 9))),
        ));
        answer = m.to_vec().unwrap();
        let a = parse_answer(&parsed, answer).unwrap();
        assert_eq!(
            a.addresses,
            [(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 9)), 300)]
        );
        // An answer to another question is not taken.
        let other = refusal(&query("evil.test."), ResponseCode::NoError);
        assert!(parse_answer(&parsed, other).is_err());
    }

    #[test]
    fn malformed_truncated_and_odd_messages_are_errors_not_panics() {
        let good = query("db.internal.").to_vec().unwrap();
        for cut in 0..good.len() {
            let _ = parse_query(&good[..cut]);
        }
        assert!(parse_query(&[0xff; 3]).is_err());
        let mut two = query("a.test.");
        two.add_query(Query::query(
            Name::from_str("b.test.").unwrap(),
            RecordType::A,
        ));
        assert!(matches!(
            parse_query(&two.to_vec().unwrap()),
            Err(DnsError::Unsupported(_))
        ));
        let response = refusal(&query("a.test."), ResponseCode::NoError);
        assert!(parse_query(&response).is_err());
    }
}
