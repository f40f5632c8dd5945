//! `accord dev-certs`: a throw-away certificate authority and certificates for a room and its
//! clients, for trying TLS and mutual TLS on one machine. Not for production: a real room
//! gets its certificate from the operator's CA (or a public one) and its clients' from theirs.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

use crate::RoomError;

/// The client names `accord dev-certs` makes certificates for by default.
pub const DEFAULT_CLIENTS: [&str; 3] = ["drinks", "snacks", "analyst"];

/// What was written.
#[derive(Debug, Clone)]
pub struct DevCerts {
    /// The CA certificate (`ca.crt`): give it to clients as `--ca` and to the room as `--client-ca`.
    pub ca_cert: PathBuf,
    /// The room's certificate and key (`room.crt`, `room.key`).
    pub room_cert: PathBuf,
    /// The room's private key.
    pub room_key: PathBuf,
    /// Per client: (name, certificate, key).
    pub clients: Vec<(String, PathBuf, PathBuf)>,
    /// The names the room certificate is valid for.
    pub room_names: Vec<String>,
}

/// Validity of the generated certificates (not before, not after), as UTC dates.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    /// First valid day (year, month, day).
    pub not_before: (i32, u8, u8),
    /// Last valid day (year, month, day).
    pub not_after: (i32, u8, u8),
}

impl Validity {
    /// From yesterday for `days` days.
    pub fn days(days: i64) -> Self {
        let from = chrono::Utc::now().date_naive() - chrono::Days::new(1);
        let until = from + chrono::Duration::days(days);
        use chrono::Datelike;
        let ymd = |d: chrono::NaiveDate| (d.year(), d.month() as u8, d.day() as u8);
        Self {
            not_before: ymd(from),
            not_after: ymd(until),
        }
    }
}

fn err(what: &str, e: impl std::fmt::Display) -> RoomError {
    RoomError::Internal(format!("could not make the {what}: {e}"))
}

fn dated(mut p: CertificateParams, v: Validity, cn: &str) -> CertificateParams {
    let (y, m, d) = v.not_before;
    p.not_before = rcgen::date_time_ymd(y, m, d);
    let (y, m, d) = v.not_after;
    p.not_after = rcgen::date_time_ymd(y, m, d);
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn.push(
        DnType::OrganizationName,
        "Accord dev certificates (not for production)",
    );
    p.distinguished_name = dn;
    p
}

/// Makes the CA, the room certificate (valid for `localhost`, `127.0.0.1`, `::1` and
/// `extra_names`) and one client certificate per name in `clients`, and writes them under
/// `dir` (created if needed): `ca.crt`, `ca.key`, `room.crt`, `room.key`, `NAME.crt`,
/// `NAME.key`. Keys get mode 0600; existing files are never overwritten.
pub fn generate(
    dir: &Path,
    extra_names: &[String],
    clients: &[String],
    validity: Validity,
) -> Result<DevCerts, RoomError> {
    for c in clients {
        if c.is_empty()
            || c == "ca"
            || c == "room"
            || !c
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')
        {
            return Err(RoomError::InvalidArgument(format!(
                "client name {c:?}: use letters, digits, '-' and '_' (and not \"ca\" or \"room\")"
            )));
        }
    }
    let mut files = vec!["ca.crt", "ca.key", "room.crt", "room.key"]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
    for c in clients {
        files.push(format!("{c}.crt"));
        files.push(format!("{c}.key"));
    }
    for f in &files {
        if dir.join(f).exists() {
            return Err(RoomError::AlreadyExists(format!(
                "{} already exists: dev-certs never overwrites; use an empty directory",
                dir.join(f).display()
            )));
        }
    }
    accord_fs::create_dir_all(dir, accord_fs::Access::Normal)?;

    let ca_key = KeyPair::generate().map_err(|e| err("CA key", e))?;
    // A name of its own per CA: two dev CAs never look like the same issuer.
    let mut tag = [0u8; 4];
    getrandom::fill(&mut tag).map_err(|e| err("CA name", e))?;
    let mut ca_params = dated(
        CertificateParams::new(Vec::<String>::new()).map_err(|e| err("CA", e))?,
        validity,
        &format!("Accord dev CA {}", hex::encode(tag)),
    );
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).map_err(|e| err("CA", e))?;
    let ca_key_pem = zeroize::Zeroizing::new(ca_key.serialize_pem());
    let issuer = Issuer::new(ca_params, ca_key);

    let mut room_names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    for n in extra_names {
        if !room_names.contains(n) {
            room_names.push(n.clone());
        }
    }
    let leaf = |names: Vec<String>, cn: &str, usage: ExtendedKeyUsagePurpose| {
        let key = KeyPair::generate().map_err(|e| err(&format!("key for {cn}"), e))?;
        let mut params = dated(
            CertificateParams::new(names).map_err(|e| err(&format!("certificate for {cn}"), e))?,
            validity,
            cn,
        );
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(|e| err(&format!("certificate for {cn}"), e))?;
        Ok::<_, RoomError>((cert.pem(), zeroize::Zeroizing::new(key.serialize_pem())))
    };

    let write = |name: &str, text: &str| -> Result<PathBuf, RoomError> {
        let path = dir.join(name);
        accord_fs::write_atomic(&path, text.as_bytes())?;
        Ok(path)
    };
    let write_key = |name: &str, text: &str| -> Result<PathBuf, RoomError> {
        let path = dir.join(name);
        accord_fs::write_new_secret(&path, text.as_bytes())?;
        Ok(path)
    };

    let ca_cert_path = write("ca.crt", &ca_cert.pem())?;
    write_key("ca.key", &ca_key_pem)?;
    let (room_pem, room_key_pem) = leaf(
        room_names.clone(),
        "accord room",
        ExtendedKeyUsagePurpose::ServerAuth,
    )?;
    let room_cert = write("room.crt", &room_pem)?;
    let room_key = write_key("room.key", &room_key_pem)?;
    let mut out = Vec::new();
    for c in clients {
        let (pem, key) = leaf(Vec::new(), c, ExtendedKeyUsagePurpose::ClientAuth)?;
        out.push((
            c.clone(),
            write(&format!("{c}.crt"), &pem)?,
            write_key(&format!("{c}.key"), &key)?,
        ));
    }
    Ok(DevCerts {
        ca_cert: ca_cert_path,
        room_cert,
        room_key,
        clients: out,
        room_names,
    })
}
