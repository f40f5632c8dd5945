//! Shared set-up for the end-to-end tests: keys, signed agreements, customer files, a real
//! room on loopback port 0, and party/analyst clients.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use accord_agreement::{Contribution, ManifestBuilder, RoomSection, SecretKey, VerifiedAgreement};
use accord_party::input::InputOptions;
use accord_party::{Connection, PartyContext, Principal, UploadOptions};
use accord_proto::v1::{self, agreements_client::AgreementsClient, query_client::QueryClient};
use accord_room::{RunningRoom, ServeConfig};
use arrow::array::RecordBatch;
use chrono::{Duration as ChronoDuration, SubsecRound as _, Utc};

/// The seed of the room key every room started here has (unless a test installs another one
/// first with [`install_room_key`]), and that [`Keys::new`] names in `[room]`.
pub const ROOM_SEED: [u8; 32] = [0xA5; 32];

/// Deterministic keys for the two parties, an analyst and the room the agreement names
/// (seeds, since keys are not `Clone`).
#[derive(Debug, Clone, Copy)]
pub struct Keys {
    pub drinks: [u8; 32],
    pub snacks: [u8; 32],
    pub analyst: [u8; 32],
    /// The room key the agreement names (default [`ROOM_SEED`], the key of every test room).
    pub room: [u8; 32],
}

impl Keys {
    pub fn new(salt: u8) -> Self {
        Self {
            drinks: [salt ^ 1; 32],
            snacks: [salt ^ 2; 32],
            analyst: [salt ^ 3; 32],
            room: ROOM_SEED,
        }
    }
    pub fn room(&self) -> SecretKey {
        SecretKey::from_seed(&self.room)
    }
    pub fn drinks(&self) -> SecretKey {
        SecretKey::from_seed(&self.drinks)
    }
    pub fn snacks(&self) -> SecretKey {
        SecretKey::from_seed(&self.snacks)
    }
    pub fn analyst(&self) -> SecretKey {
        SecretKey::from_seed(&self.analyst)
    }
}

/// A signed manifest: drinks contributes `loyalty_tier`, `region` (dimensions) and
/// `monthly_spend` (0..500); snacks contributes `favourite` (dimension) and `weekly_spend`
/// (0..100). The table columns therefore match the engine's policy corpus.
pub fn agreement_text(id: &str, version: u64, keys: &Keys, k: u32, max_rows: u64) -> String {
    let now = Utc::now().trunc_subsecs(0);
    let room = RoomSection {
        operator: "Test Rooms Ltd".into(),
        public_key: keys.room().public_key(),
    };
    let text = ManifestBuilder::new(
        id,
        "End-to-end test of joint promotions",
        now - ChronoDuration::hours(1),
        now + ChronoDuration::days(30),
        room,
    )
    .version(version)
    .min_group_size(k)
    .party(
        "drinks",
        keys.drinks().public_key(),
        max_rows,
        "consent",
        [
            Contribution::dimension("loyalty_tier"),
            Contribution::dimension("region"),
            Contribution::metric("monthly_spend", 0.0, 500.0),
        ],
    )
    .party(
        "snacks",
        keys.snacks().public_key(),
        max_rows,
        "consent",
        [
            Contribution::dimension("favourite"),
            Contribution::metric("weekly_spend", 0.0, 100.0),
        ],
    )
    .analyst("ana@drinks.example", "drinks", keys.analyst().public_key())
    .exact_results()
    .to_toml();
    let text = accord_agreement::sign_text(&text, "drinks", &keys.drinks()).unwrap();
    accord_agreement::sign_text(&text, "snacks", &keys.snacks()).unwrap()
}

/// Changes a signed agreement with `edit` (applied to each line) and signs it again by both parties.
pub fn resign(text: &str, keys: &Keys, edit: impl Fn(&str) -> String) -> String {
    let unsigned: String = text
        .lines()
        .take_while(|l| !l.starts_with("[signatures]"))
        .map(|l| edit(l) + "\n")
        .collect();
    let text = accord_agreement::sign_text(&unsigned, "drinks", &keys.drinks()).unwrap();
    accord_agreement::sign_text(&text, "snacks", &keys.snacks()).unwrap()
}

pub fn verified(text: &str) -> VerifiedAgreement {
    accord_agreement::verify(text, Utc::now()).unwrap()
}

/// One customer row of a party file.
#[derive(Debug, Clone)]
pub struct Customer {
    pub email: String,
    pub consent: bool,
    /// Attribute cells in the party's column order ("" = empty).
    pub cells: Vec<String>,
}

/// Customers `c<i>@example.org` for `i` in `range`, all consenting, every one with the same
/// attributes (drinks: gold, north, 10; snacks: nuts, 5).
pub fn uniform_customers(range: std::ops::Range<usize>, party: &str) -> Vec<Customer> {
    range
        .map(|i| Customer {
            email: format!("c{i}@example.org"),
            consent: true,
            cells: if party == "drinks" {
                vec!["gold".into(), "north".into(), "10".into()]
            } else {
                vec!["nuts".into(), "5".into()]
            },
        })
        .collect()
}

pub fn write_csv(path: &Path, party: &str, customers: &[Customer]) {
    let header = match party {
        "drinks" => "email,consent,loyalty_tier,region,monthly_spend",
        _ => "email,consent,favourite,weekly_spend",
    };
    let mut s = format!("{header}\n");
    for c in customers {
        writeln!(
            s,
            "{},{},{}",
            c.email,
            if c.consent { "true" } else { "false" },
            c.cells.join(",")
        )
        .unwrap();
    }
    std::fs::write(path, s).unwrap();
}

/// A room on 127.0.0.1:0 (and Flight SQL on another free port).
pub async fn start_room(data_dir: &Path) -> RunningRoom {
    start_room_with(data_dir, accord_room::Limits::default(), 0).await
}

/// A room with these limits on 127.0.0.1:`port` (0: a free port), Flight SQL on a free port.
pub async fn start_room_with(
    data_dir: &Path,
    limits: accord_room::Limits,
    port: u16,
) -> RunningRoom {
    let mut config = serve_config(data_dir);
    config.limits = limits;
    config.listen = SocketAddr::from(([127, 0, 0, 1], port));
    accord_room::start(config).await.unwrap()
}

/// Gives the room of `data_dir` the key with this seed (before it first starts; a room
/// started by [`serve_config`] without one gets [`ROOM_SEED`]).
pub fn install_room_key(data_dir: &Path, seed: [u8; 32]) {
    accord_room::identity::install(data_dir, &SecretKey::from_seed(&seed)).unwrap();
}

/// Opens a room in `data_dir` without serving it (key [`ROOM_SEED`] unless it has one).
pub fn open_room(data_dir: &Path) -> accord_room::Room {
    if !accord_room::identity::key_path(data_dir).exists() {
        install_room_key(data_dir, ROOM_SEED);
    }
    accord_room::Room::open(data_dir).unwrap()
}

/// The configuration of [`start_room`] (loopback, open registration). The room's key is
/// [`ROOM_SEED`]'s unless the data directory already holds one.
pub fn serve_config(data_dir: &Path) -> ServeConfig {
    if !accord_room::identity::key_path(data_dir).exists() {
        install_room_key(data_dir, ROOM_SEED);
    }
    ServeConfig {
        data_dir: data_dir.to_path_buf(),
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        flight_sql: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        expiry_check: Duration::from_millis(200),
        tls: None,
        insecure_plaintext_network: false,
        tls_proxy_cert: None,
        limits: accord_room::Limits::default(),
        registration_allow: None,
        open_registration: false,
        engine: Default::default(),
    }
}

/// The whole audit log of agreement `fingerprint`, read as party `party` with `key`
/// (analysts may not read it), verified against the room's signed head.
pub async fn party_audit_log(
    url: &str,
    fingerprint: &str,
    party: &str,
    key: &SecretKey,
) -> (Vec<String>, accord_room::audit::LogSummary) {
    let mut conn = Connection::open(url, fingerprint, Principal::Party(party), key)
        .await
        .unwrap();
    let (entries, head) = conn.audit_log().await.unwrap();
    let summary = accord_room::audit::verify_log(&entries, &head, conn.room_key()).unwrap();
    (entries, summary)
}

pub fn url(room: &RunningRoom) -> String {
    format!("http://{}", room.grpc_addr)
}

pub async fn submit(url: &str, text: &str) -> Result<v1::SubmitAgreementResponse, tonic::Status> {
    let channel = accord_party::client::channel(url).await.unwrap();
    AgreementsClient::new(channel)
        .submit(v1::SubmitAgreementRequest {
            manifest_toml: text.to_owned(),
        })
        .await
        .map(tonic::Response::into_inner)
}

pub fn party(
    agreement: &VerifiedAgreement,
    name: &str,
    keys: &Keys,
    state: &Path,
    url: &str,
) -> PartyContext {
    let key = if name == "drinks" {
        keys.drinks()
    } else {
        keys.snacks()
    };
    PartyContext::new(agreement.clone(), name, key, state.to_path_buf(), url).unwrap()
}

pub fn upload_options(input: PathBuf, batch_rows: usize, wait: bool) -> UploadOptions {
    UploadOptions {
        input,
        read: InputOptions {
            id_column: None,
            skip_bad_rows: false,
        },
        batch_rows,
        wait,
        worker: None,
    }
}

/// Uploads both parties concurrently and waits until the room has sealed.
pub async fn run_psi(
    agreement: &VerifiedAgreement,
    keys: &Keys,
    dir: &Path,
    url: &str,
    batch_rows: usize,
) {
    let a = party(agreement, "drinks", keys, &dir.join("drinks-state"), url);
    let b = party(agreement, "snacks", keys, &dir.join("snacks-state"), url);
    let oa = upload_options(dir.join("drinks.csv"), batch_rows, true);
    let ob = upload_options(dir.join("snacks.csv"), batch_rows, true);
    let (ra, rb) = tokio::join!(accord_party::upload(&a, &oa), accord_party::upload(&b, &ob));
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert!(ra.status.unwrap().tokens_complete);
    assert!(rb.status.unwrap().tokens_complete);
}

pub async fn analyst(url: &str, agreement: &str, keys: &Keys) -> Connection {
    let key = keys.analyst();
    let public = key.public_key();
    Connection::open(url, agreement, Principal::AnalystKey(&public), &key)
        .await
        .unwrap()
}

/// Runs SQL through the gRPC Query service: Ok(batches) or Err((rule, message)).
pub async fn grpc_query(
    conn: &mut Connection,
    sql: &str,
) -> Result<Vec<RecordBatch>, (String, String)> {
    let mut client = QueryClient::new(conn.channel());
    let response = client
        .run(conn.request(v1::RunQueryRequest {
            sql: sql.to_owned(),
        }))
        .await
        .unwrap()
        .into_inner();
    conn.check_head(response.head.as_ref()).unwrap();
    match response.outcome.unwrap() {
        v1::run_query_response::Outcome::Answer(a) => {
            let reader = arrow::ipc::reader::StreamReader::try_new(
                std::io::Cursor::new(a.arrow_ipc_stream),
                None,
            )
            .unwrap();
            Ok(reader.map(Result::unwrap).collect())
        }
        v1::run_query_response::Outcome::Refused(r) => Err((r.rule, r.message)),
    }
}

/// Every file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// A free loopback port (bound then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A Flight SQL client for the room at `addr`, sending `token` (a session from [`analyst`]).
pub async fn flight_client(
    addr: std::net::SocketAddr,
    token: &str,
) -> arrow_flight::sql::client::FlightSqlServiceClient<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = arrow_flight::sql::client::FlightSqlServiceClient::new(channel);
    client.set_token(token.to_owned());
    client
}

/// Runs SQL through Flight SQL (GetFlightInfo, then DoGet of each endpoint): Ok(batches), or
/// the error text (a refusal reads `query refused [<rule>]: …`).
pub async fn flight_query(
    client: &mut arrow_flight::sql::client::FlightSqlServiceClient<tonic::transport::Channel>,
    sql: &str,
) -> Result<Vec<RecordBatch>, String> {
    let info = client
        .execute(sql.to_owned(), None)
        .await
        .map_err(|e| e.to_string())?;
    use futures::TryStreamExt;
    let mut out = Vec::new();
    for endpoint in info.endpoint {
        let ticket = endpoint.ticket.ok_or("no ticket")?;
        let stream = client.do_get(ticket).await.map_err(|e| e.to_string())?;
        out.extend(
            stream
                .try_collect::<Vec<_>>()
                .await
                .map_err(|e| e.to_string())?,
        );
    }
    Ok(out)
}

/// The single Int64 value of a one-row, one-column answer (e.g. `SELECT COUNT(*) …`).
pub fn count(batches: &[RecordBatch]) -> i64 {
    batches[0]
        .column(0)
        .as_any()
        .downcast_ref::<arrow::array::Int64Array>()
        .expect("an Int64 column")
        .value(0)
}

/// `SELECT COUNT(*) FROM overlap` as the agreement's analyst.
pub async fn overlap_count(url: &str, agreement: &str, keys: &Keys) -> i64 {
    let mut ana = analyst(url, agreement, keys).await;
    count(
        &grpc_query(&mut ana, "SELECT COUNT(*) FROM overlap")
            .await
            .expect("the count is answered"),
    )
}
