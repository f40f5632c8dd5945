//! `accord query`: an analyst's aggregate SQL against the room.

use std::path::PathBuf;
use std::process::ExitCode;

use accord_party::QueryOutcome;
use accord_party::{Connection, Principal};
use accord_proto::v1;
use anyhow::{Context, Result, bail};
use arrow::array::RecordBatch;

use crate::common::{TlsArgs, agreement_ref_and_room, load_key, party_error, runtime};

/// Output formats.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Format {
    /// An aligned text table; numbers with a fraction are shown with 2 decimals (4
    /// significant digits below 1). Use csv or json for full precision.
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
    #[arg(
        long,
        conflicts_with = "sql_file",
        required_unless_present_any = ["sql_file", "describe", "print_token", "budget"]
    )]
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
    /// Show what is left of your party's differential-privacy budget and how many more
    /// queries it allows, instead of running SQL.
    #[arg(long)]
    pub budget: bool,
    /// Print a session token for ADBC/JDBC clients (`authorization: Bearer <token>`) and exit.
    #[arg(long)]
    pub print_token: bool,
    #[command(flatten)]
    pub tls: TlsArgs,
    /// Where the fingerprint first used per room and agreement id is remembered (default:
    /// the key file's path with `.pins` appended). A changed fingerprint is refused.
    #[arg(long, value_name = "FILE")]
    pub pins: Option<PathBuf>,
}

/// The pins file of a client: `--pins`, or next to its key file.
pub fn pins_path(pins: Option<&PathBuf>, key: &std::path::Path) -> PathBuf {
    pins.cloned().unwrap_or_else(|| {
        let mut p = key.as_os_str().to_owned();
        p.push(".pins");
        PathBuf::from(p)
    })
}

pub fn run(args: QueryArgs) -> Result<ExitCode> {
    let key = load_key(&args.key)?;
    let (agreement, room) = agreement_ref_and_room(&args.agreement)?;
    let sql = match (&args.sql, &args.sql_file) {
        (Some(s), _) => Some(s.clone()),
        (None, Some(f)) => Some(
            std::fs::read_to_string(f)
                .with_context(|| format!("could not read {}", f.display()))?,
        ),
        (None, None) => None,
    };
    if sql.is_none() && !args.describe && !args.print_token && !args.budget {
        bail!("give the query with --sql or --sql-file (or use --describe to see the columns)");
    }
    let tls = args.tls.load()?;
    runtime()?.block_on(async move {
        let public = key.public_key();
        let mut conn = Connection::open_checked(
            &args.room,
            &tls,
            &agreement,
            Principal::AnalystKey(&public),
            &key,
            room.as_ref(),
        )
        .await
        .map_err(party_error)?;
        crate::common::check_pins_and_heads(
            &pins_path(args.pins.as_ref(), &args.key),
            &args.room,
            &agreement,
            &mut conn,
        )
        .await?;
        if args.print_token {
            println!("{}", conn.token());
            return Ok(ExitCode::SUCCESS);
        }
        if args.describe || args.budget {
            let d = conn.describe().await.map_err(party_error)?;
            if args.budget {
                match &d.budget {
                    Some(b) => println!("{}", budget_text(b)),
                    None => println!(
                        "agreement {} has exact results (no differential privacy): there is no budget",
                        d.agreement_id
                    ),
                }
            } else {
                print_describe(&d);
            }
            return Ok(ExitCode::SUCCESS);
        }
        let sql = sql.unwrap_or_default();
        match conn.run_query(&sql).await.map_err(party_error)? {
            QueryOutcome::Refused { rule, message } => {
                eprintln!(
                    "query refused [{}]: {}",
                    accord_agreement::text::escape(&rule, 64),
                    accord_party::display::room_message(&message)
                );
                Ok(ExitCode::from(1))
            }
            QueryOutcome::Answer {
                arrow_ipc_stream,
                budget,
            } => {
                let batches = decode(&arrow_ipc_stream)?;
                print!("{}", render(&batches, args.format)?);
                if let Some(b) = &budget {
                    // On stderr, so CSV and JSON on stdout stay machine-readable.
                    eprintln!(
                        "differentially private answer (noisy, epsilon {}); {}",
                        b.epsilon_per_query,
                        budget_text(b)
                    );
                }
                Ok(ExitCode::SUCCESS)
            }
        }
    })
}

/// One line about a party's budget, e.g. for `--budget`.
pub fn budget_text(b: &v1::Budget) -> String {
    format!(
        "budget of party {}: epsilon {:.3} of {} left ({} spent by {} queries); {} aggregations remaining at epsilon {} each",
        b.party,
        b.epsilon_remaining,
        b.epsilon_budget,
        (b.epsilon_spent * 1000.0).round() / 1000.0,
        b.queries_answered,
        b.queries_remaining,
        b.epsilon_per_query
    )
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
    if let Some(b) = &d.budget {
        println!(
            "differential privacy: every answer is noisy and groups are shown only if their noisy size clears a threshold"
        );
        println!("{}", budget_text(b));
    }
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

/// A float as a person reads it in a table: 2 decimals, or 4 significant digits for
/// magnitudes below 1 so that small averages do not print as 0.00.
fn human_float(v: f64) -> String {
    if !v.is_finite() || v == 0.0 {
        return v.to_string();
    }
    let decimals = if v.abs() >= 1.0 {
        2
    } else {
        // digits needed after the point for 4 significant digits, at most 12
        (3 - v.abs().log10().floor() as i32).clamp(2, 12) as usize
    };
    format!("{v:.decimals$}")
}

/// The batch with every Float64 column turned into text rounded by [`human_float`].
fn round_floats(batch: &RecordBatch) -> Result<RecordBatch> {
    use arrow::array::{Array, ArrayRef, Float64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;

    let mut fields = Vec::with_capacity(batch.num_columns());
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(batch.num_columns());
    for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
        match column.as_any().downcast_ref::<Float64Array>() {
            Some(values) => {
                let text: StringArray = values.iter().map(|v| v.map(human_float)).collect();
                fields.push(Field::new(
                    field.name(),
                    DataType::Utf8,
                    field.is_nullable(),
                ));
                columns.push(Arc::new(text));
            }
            None => {
                fields.push(field.as_ref().clone());
                columns.push(column.clone());
            }
        }
    }
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns,
    )?)
}

/// Renders batches in a format.
pub fn render(batches: &[RecordBatch], format: Format) -> Result<String> {
    match format {
        Format::Table => {
            let rounded = batches
                .iter()
                .map(round_floats)
                .collect::<Result<Vec<_>>>()?;
            Ok(format!(
                "{}\n",
                arrow::util::pretty::pretty_format_batches(&rounded)?
            ))
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Float64Array, Int64Array};
    use arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;

    #[test]
    fn human_float_rounds_for_reading() {
        assert_eq!(human_float(2335294.1000000066), "2335294.10");
        assert_eq!(human_float(30.479519832985325), "30.48");
        assert_eq!(human_float(-1.005), "-1.00");
        assert_eq!(human_float(0.5), "0.5000");
        assert_eq!(human_float(0.00123456), "0.001235");
        assert_eq!(human_float(0.0), "0");
        assert_eq!(human_float(f64::NAN), "NaN");
    }

    #[test]
    fn tables_round_floats_and_csv_keeps_them() {
        let batch = RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("n", DataType::Int64, false),
                Field::new("avg", DataType::Float64, true),
            ])),
            vec![
                Arc::new(Int64Array::from(vec![12454])),
                Arc::new(Float64Array::from(vec![Some(30.479519832985325)])),
            ],
        )
        .unwrap();
        let table = render(std::slice::from_ref(&batch), Format::Table).unwrap();
        assert!(table.contains("| 12454 | 30.48 |"), "{table}");
        let csv = render(&[batch], Format::Csv).unwrap();
        assert_eq!(csv, "n,avg\n12454,30.479519832985325\n");
    }
}
