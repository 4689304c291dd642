//! Messages about a config file: an error or a warning at `file:line:col`, printed
//! with the offending line and a caret under the column, like a compiler does.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    pub file: String,
    /// 1-based, as editors count.
    pub line: usize,
    /// 1-based, in characters.
    pub col: usize,
    pub message: String,
    /// The text of the line, shown under the message (empty when not useful).
    pub line_text: String,
    /// "did you mean ..." and the like.
    pub help: Option<String>,
}

impl Diagnostic {
    /// Short form used by logs and tests: `file:line:col: message`.
    pub fn short(&self) -> String {
        format!("{}:{}:{}: {}", self.file, self.line, self.col, self.message)
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        writeln!(
            f,
            "{}:{}:{}: {kind}: {}",
            self.file, self.line, self.col, self.message
        )?;
        if !self.line_text.is_empty() {
            // Long lines (a 10 MB line in a broken file) are cut around the column.
            let chars: Vec<char> = self.line_text.chars().collect();
            let col0 = self.col.saturating_sub(1).min(chars.len());
            let start = col0.saturating_sub(60);
            let end = (col0 + 60).min(chars.len());
            let shown: String = chars[start..end]
                .iter()
                .map(|c| if c.is_control() { ' ' } else { *c })
                .collect();
            let gutter = self.line.to_string();
            let pad = " ".repeat(gutter.len());
            let prefix = if start > 0 { "..." } else { "" };
            writeln!(f, "{pad} |")?;
            writeln!(f, "{gutter} | {prefix}{shown}")?;
            writeln!(
                f,
                "{pad} | {}{}^",
                " ".repeat(prefix.len()),
                " ".repeat(col0 - start)
            )?;
        }
        if let Some(help) = &self.help {
            writeln!(f, "  = help: {help}")?;
        }
        Ok(())
    }
}

/// Every error found in a config file (a check reports them all, not the first).
#[derive(Debug, Clone)]
pub struct ConfigErrors(pub Vec<Diagnostic>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.0 {
            write!(f, "{d}")?;
        }
        let n = self.0.len();
        write!(
            f,
            "{n} error{} in configuration",
            if n == 1 { "" } else { "s" }
        )
    }
}

impl std::error::Error for ConfigErrors {}
