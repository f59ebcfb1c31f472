//! CSV as every report writes it (contract details, exports' manifests, operation logs,
//! statements, accounts): RFC 4180 through the `csv` crate (fields with commas, quotes or line
//! breaks quoted, CRLF line ends) and UTF-8 with a byte-order mark by default, so Excel opens
//! Japanese text correctly; `?encoding=utf-8` leaves the mark out.

use shomei_schema::DocumentRow;
use shomei_vault::{Keyring, VaultError};

/// UTF-8's byte-order mark.
pub const BOM: &[u8] = b"\xEF\xBB\xBF";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Encoding {
    /// UTF-8 with a byte-order mark (Excel).
    #[default]
    Utf8Bom,
    Utf8,
}

impl std::str::FromStr for Encoding {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "utf-8-bom" | "utf8-bom" => Ok(Encoding::Utf8Bom),
            "utf-8" | "utf8" => Ok(Encoding::Utf8),
            other => Err(format!(
                "encoding {other:?} is not supported (utf-8-bom, the default, or utf-8)"
            )),
        }
    }
}

/// The first bytes of a CSV: the mark (when wanted) and the header row.
pub fn start(columns: &[&str], encoding: Encoding) -> Vec<u8> {
    let mut out = match encoding {
        Encoding::Utf8Bom => BOM.to_vec(),
        Encoding::Utf8 => Vec::new(),
    };
    out.extend(rows([columns.iter().map(|c| (*c).to_owned()).collect()]));
    out
}

/// Records as CSV lines (CRLF), quoted where RFC 4180 needs it.
pub fn rows(records: impl IntoIterator<Item = Vec<String>>) -> Vec<u8> {
    let mut writer = csv::WriterBuilder::new()
        .terminator(csv::Terminator::CRLF)
        .from_writer(Vec::new());
    for record in records {
        writer
            .write_record(&record)
            .expect("writing CSV to memory cannot fail");
    }
    writer
        .into_inner()
        .expect("flushing CSV to memory cannot fail")
}

/// Timestamps as RFC 3339 in UTC, to the second.
pub fn time(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The contract-details columns (`GET /v1/documents.csv`; an export's manifest adds `file`).
pub const DOCUMENT_COLUMNS: [&str; 11] = [
    "id",
    "title",
    "folder",
    "parties",
    "status",
    "pages",
    "created_at",
    "signed_at",
    "revision",
    "sha256",
    "size_bytes",
];

/// The names of everyone who signed the document, in signing order, `; `-separated (opened from
/// their sealed sign payloads).
pub async fn parties(keys: &Keyring, row: &DocumentRow) -> Result<String, VaultError> {
    let mut names = Vec::new();
    for sealed in row.parties.iter().flatten() {
        names.push(crate::sign::signer_name(keys, sealed).await?);
    }
    Ok(names.join("; "))
}

/// A document's contract-details record; `parties` from [`parties`].
pub fn document_record(row: &DocumentRow, parties: String) -> Vec<String> {
    vec![
        row.id.to_string(),
        row.title.clone().unwrap_or_default(),
        row.folder.clone(),
        parties,
        row.status.clone(),
        row.pages.to_string(),
        time(row.created_at),
        row.signed_at.map(time).unwrap_or_default(),
        row.revision.to_string(),
        hex::encode(&row.sha256),
        row.size_bytes.to_string(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_that_need_it_are_quoted_and_lines_end_in_crlf() {
        let out = rows([vec![
            "a,b".into(),
            "say \"hi\"".into(),
            "two\nlines".into(),
            "署名".into(),
        ]]);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "\"a,b\",\"say \"\"hi\"\"\",\"two\nlines\",署名\r\n"
        );
    }

    #[test]
    fn the_byte_order_mark_comes_only_when_asked_for() {
        assert!(start(&["id"], Encoding::Utf8Bom).starts_with(BOM));
        assert_eq!(start(&["id"], Encoding::Utf8), b"id\r\n");
        assert_eq!("utf-8".parse::<Encoding>(), Ok(Encoding::Utf8));
        assert!("shift_jis".parse::<Encoding>().is_err());
    }
}
