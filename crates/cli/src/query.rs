//! `accord query`: an analyst's aggregate SQL against the room.

use std::path::PathBuf;
use std::process::ExitCode;

use accord_party::{Connection, Principal};
use accord_proto::v1::{self, query_client::QueryClient};
use anyhow::{Context, Result, anyhow, bail};
use arrow::array::RecordBatch;

use crate::common::{agreement_ref, load_key, party_error, runtime};

/// Output formats.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Format {
    /// An aligned text table.
    Table,
    /// CSV with a header line.
    Csv,
    /// A JSON array of row objects.
    Json,
}

#[derive(Debug, clap::Args)]
pub struct QueryArgs {
    /// The room's URL, e.g. http://127.0.0.1:7700.
    #[arg(long)]
    pub room: String,
    /// The agreement: its id, fingerprint, or the agreement file.
    #[arg(long)]
    pub agreement: String,
    /// The analyst's Ed25519 key file (the agreement names the analyst by this key).
    #[arg(long)]
    pub key: PathBuf,
    /// The SQL to run.
    #[arg(long, conflicts_with = "sql_file")]
    pub sql: Option<String>,
    /// A file holding the SQL to run.
    #[arg(long)]
    pub sql_file: Option<PathBuf>,
    /// How to print the result.
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    /// List the queryable columns and their roles instead of running SQL.
    #[arg(long)]
    pub describe: bool,
    /// Print a session token for ADBC/JDBC clients (`authorization: Bearer <token>`) and exit.
    #[arg(long)]
    pub print_token: bool,
}

pub fn run(args: QueryArgs) -> Result<ExitCode> {
    let key = load_key(&args.key)?;
    let agreement = agreement_ref(&args.agreement)?;
    let sql = match (&args.sql, &args.sql_file) {
        (Some(s), _) => Some(s.clone()),
        (None, Some(f)) => Some(
            std::fs::read_to_string(f)
                .with_context(|| format!("could not read {}", f.display()))?,
        ),
        (None, None) => None,
    };
    if sql.is_none() && !args.describe && !args.print_token {
        bail!("give the query with --sql or --sql-file (or use --describe to see the columns)");
    }
    runtime()?.block_on(async move {
        let public = key.public_key();
        let mut conn =
            Connection::open(&args.room, &agreement, Principal::AnalystKey(&public), &key)
                .await
                .map_err(party_error)?;
        if args.print_token {
            println!("{}", conn.token());
            return Ok(ExitCode::SUCCESS);
        }
        let mut client =
            QueryClient::new(conn.channel()).max_decoding_message_size(64 * 1024 * 1024);
        if args.describe {
            let d = client
                .describe(conn.request(v1::DescribeRequest {}))
                .await
                .map_err(|s| conn.error(s))
                .map_err(party_error)?
                .into_inner();
            conn.check_head(d.head.as_ref()).map_err(party_error)?;
            print_describe(&d);
            return Ok(ExitCode::SUCCESS);
        }
        let sql = sql.unwrap_or_default();
        let response = client
            .run(conn.request(v1::RunQueryRequest { sql }))
            .await
            .map_err(|s| conn.error(s))
            .map_err(party_error)?
            .into_inner();
        conn.check_head(response.head.as_ref())
            .map_err(party_error)?;
        match response.outcome {
            Some(v1::run_query_response::Outcome::Refused(r)) => {
                eprintln!("query refused [{}]: {}", r.rule, r.message);
                Ok(ExitCode::from(1))
            }
            Some(v1::run_query_response::Outcome::Answer(a)) => {
                let batches = decode(&a.arrow_ipc_stream)?;
                print!("{}", render(&batches, args.format)?);
                Ok(ExitCode::SUCCESS)
            }
            None => Err(anyhow!("the room sent neither an answer nor a refusal")),
        }
    })
}

fn print_describe(d: &v1::DescribeResponse) {
    println!(
        "agreement {} ({})",
        d.agreement_id,
        if d.sealed {
            "sealed: queryable"
        } else {
            "not sealed yet"
        }
    );
    println!("table overlap: one row per customer present in both parties' data");
    println!(
        "groups with fewer than {} customers are never shown",
        d.min_group_size
    );
    println!("aggregates allowed: {}", d.aggregates.join(", "));
    for c in &d.columns {
        let role = if c.role == "metric" {
            format!("metric in [{}, {}]: aggregate only", c.min, c.max)
        } else {
            "dimension: group and filter".into()
        };
        if c.withheld.is_empty() {
            println!("  {:<32} {role}", c.name);
        } else {
            println!("  {:<32} withheld: {}", c.name, c.withheld);
        }
    }
}

/// Decodes an Arrow IPC stream.
pub fn decode(bytes: &[u8]) -> Result<Vec<RecordBatch>> {
    let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)
        .context("the room's answer is not a valid Arrow IPC stream")?;
    let mut out = Vec::new();
    for b in reader {
        out.push(b.context("the room's answer is not a valid Arrow IPC stream")?);
    }
    Ok(out)
}

/// Renders batches in a format.
pub fn render(batches: &[RecordBatch], format: Format) -> Result<String> {
    match format {
        Format::Table => Ok(format!(
            "{}\n",
            arrow::util::pretty::pretty_format_batches(batches)?
        )),
        Format::Csv => {
            let mut out = Vec::new();
            {
                let mut w = arrow::csv::WriterBuilder::new()
                    .with_header(true)
                    .build(&mut out);
                for b in batches {
                    w.write(b)?;
                }
            }
            Ok(String::from_utf8(out)?)
        }
        Format::Json => {
            let mut out = Vec::new();
            {
                let mut w = arrow::json::ArrayWriter::new(&mut out);
                let refs: Vec<&RecordBatch> = batches.iter().collect();
                w.write_batches(&refs)?;
                w.finish()?;
            }
            let mut s = String::from_utf8(out)?;
            if s.is_empty() {
                s.push_str("[]");
            }
            s.push('\n');
            Ok(s)
        }
    }
}
