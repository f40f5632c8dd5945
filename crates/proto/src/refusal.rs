//! Why a party refuses to blind a partner batch: a closed set of codes.
//!
//! `WorkRefusal.reason` is `"<code>: <detail>"`. The room accepts only the codes below, keeps
//! the detail short and escaped, and relays it to the partner, whose operator reads it: the
//! code says what happened in words this crate chose, never words the other side chose.

/// What the owners do after any refusal (docs/PROTOCOL.md, "Refusals and recovery"): a refused
/// batch is never tokenized, so its agreement version can never seal.
pub const RECOVERY: &str = "this agreement version can never seal: fix the cause, then both \
     parties sign a new agreement version (version + 1), submit it to the room, and both upload \
     again under it (`accord party upload --wait`; each version has its own state directory)";

/// The reasons a party may give for refusing a partner batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum WorkRefusalCode {
    /// The batch names a sender other than the partner.
    WrongSender,
    /// The partner's signature over the batch does not verify.
    BadSignature,
    /// The batch number was blinded before with other points (blind once).
    BlindedBefore,
    /// Blinding it would take the partner past its `max_rows`.
    OverCap,
    /// A point does not decode, is the identity, or repeats.
    InvalidPoints,
}

impl WorkRefusalCode {
    /// Every code.
    pub const ALL: [WorkRefusalCode; 5] = [
        Self::WrongSender,
        Self::BadSignature,
        Self::BlindedBefore,
        Self::OverCap,
        Self::InvalidPoints,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::WrongSender => "wrong-sender",
            Self::BadSignature => "bad-signature",
            Self::BlindedBefore => "blinded-before",
            Self::OverCap => "over-cap",
            Self::InvalidPoints => "invalid-points",
        }
    }

    /// What the code means, for the operator of the refused party.
    pub fn meaning(self) -> &'static str {
        match self {
            Self::WrongSender => "the batch did not come from the partner",
            Self::BadSignature => "the batch's signature does not verify with the agreement's key",
            Self::BlindedBefore => "this batch number was already blinded with other points",
            Self::OverCap => "blinding it would exceed the agreed max_rows",
            Self::InvalidPoints => "the batch holds an invalid, identity or repeated point",
        }
    }

    /// The usual cause of a refusal with this code, for the owners (docs/PROTOCOL.md,
    /// "Refusals and recovery"); what they do next is [`RECOVERY`], the same for every code.
    pub fn likely_cause(self) -> &'static str {
        match self {
            Self::WrongSender => {
                "the room relayed the batch under another party's name (a room fault or tampering: \
                 tell the room's operator)"
            }
            Self::BadSignature => {
                "the batch changed between its owner and the partner, or the partner checks it \
                 with another key than the one the owner signs with (compare the agreement files \
                 and tell the room's operator)"
            }
            Self::BlindedBefore => {
                "the partner's state directory already holds this batch number with other points \
                 (a state directory reused or restored from another upload)"
            }
            Self::OverCap => {
                "the owner uploaded more rows than the partner accepts (max_rows too low, or the \
                 partner's state directory counts an earlier upload)"
            }
            Self::InvalidPoints => {
                "the owner's software produced an invalid point (upgrade accord on the owner's side)"
            }
        }
    }

    /// The reason text `"<code>: <detail>"`.
    pub fn reason(self, detail: &str) -> String {
        format!("{}: {detail}", self.as_str())
    }

    /// Splits a reason into its code and detail; `None` when the code is not one of ours.
    pub fn parse(reason: &str) -> Option<(WorkRefusalCode, &str)> {
        let (code, detail) = reason.split_once(':').unwrap_or((reason, ""));
        Self::ALL
            .into_iter()
            .find(|c| c.as_str() == code.trim())
            .map(|c| (c, detail.trim()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_round_trip_and_unknown_codes_are_refused() {
        for c in WorkRefusalCode::ALL {
            assert_eq!(
                WorkRefusalCode::parse(&c.reason("batch 3")),
                Some((c, "batch 3"))
            );
        }
        assert_eq!(WorkRefusalCode::parse("please wire money: now"), None);
        assert_eq!(
            WorkRefusalCode::parse("over-cap"),
            Some((WorkRefusalCode::OverCap, ""))
        );
    }
}
