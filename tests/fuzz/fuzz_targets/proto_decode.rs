//! Fuzz the wire decoding: arbitrary bytes as every request message the room accepts, then
//! the field checks the room applies. Must never panic.
#![no_main]

use accord_proto::v1;
use prost::Message;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(m) = v1::UploadMessage::decode(data)
        && let Some(v1::upload_message::Kind::Batch(b)) = m.kind
    {
        if let Ok(n) = accord_proto::count_items("points", &b.points, accord_proto::limits::POINT_LEN) {
            let _ = accord_proto::expect_items("handles", &b.handles, accord_proto::limits::HANDLE_LEN, n);
        }
        let _ = accord_proto::fixed::<64>("signature", &b.signature);
    }
    let _ = v1::ReturnWorkMessage::decode(data);
    if let Ok(c) = v1::ChallengeRequest::decode(data) {
        let _ = accord_proto::fixed::<32>("client_nonce", &c.client_nonce);
    }
    let _ = v1::AuthenticateRequest::decode(data);
    let _ = v1::EraseRequest::decode(data);
    let _ = v1::RunQueryRequest::decode(data);
    let _ = v1::SubmitAgreementRequest::decode(data);
});
