//! The variables a handler declares it sets: listed for `register-var-names`, checked against
//! HAProxy's 64-byte `scope.prefix.name` rule once the prefix is known.
//!
//! HAProxy silently ignores a set-var whose name it does not know (unless `option
//! force-set-var`), and truncates or refuses names whose `scope.prefix.name` exceeds 63 bytes
//! (see [`VarName`]). A handler that declares its variables lets the agent print the
//! `register-var-names` line and fail fast at startup on a name that cannot work with the
//! configured `option var-prefix`.
//!
//! ```
//! use spoa_runtime::{Scope, VarDecl, vars};
//! const SCORE: VarDecl = VarDecl::new(Scope::Transaction, "score");
//! const REASON: VarDecl = VarDecl::new(Scope::Transaction, "reason");
//! let declared = [SCORE, REASON];
//! assert_eq!(vars::register_var_names(&declared), "register-var-names score reason");
//! assert!(vars::check(&declared, "botguard").is_ok());
//! assert!(vars::check(&declared, &"p".repeat(60)).is_err());
//! ```

use std::fmt;

use spop_proto::{Scope, VarName, VarNameError};

/// One variable a handler sets: its scope and its (validated) name.
///
/// ```
/// use spoa_runtime::{Scope, VarDecl};
/// const SCORE: VarDecl = VarDecl::new(Scope::Transaction, "score");
/// assert_eq!(SCORE.to_string(), "txn.<prefix>.score");
/// assert_eq!(SCORE.full_name("botguard"), "txn.botguard.score");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct VarDecl {
    /// The scope.
    pub scope: Scope,
    /// The name, without scope and prefix.
    pub name: VarName<'static>,
}

impl VarDecl {
    /// Declares `scope`/`name`; the name's characters are checked like [`VarName::new`]
    /// (a compile error in a `const`).
    ///
    /// # Panics
    ///
    /// If `name` holds bytes outside `[A-Za-z0-9._]` or is empty.
    #[track_caller]
    pub const fn new(scope: Scope, name: &'static str) -> Self {
        Self {
            scope,
            name: VarName::new(name),
        }
    }

    /// The name HAProxy gives the variable with `option var-prefix <prefix>`.
    pub fn full_name(&self, prefix: &str) -> String {
        format!("{}.{prefix}.{}", self.scope, self.name)
    }

    /// Checks the 64-byte rule for this prefix.
    ///
    /// ```
    /// use spoa_runtime::{Scope, VarDecl};
    /// assert!(VarDecl::new(Scope::Session, "x").check("iprep").is_ok());
    /// ```
    pub const fn check(&self, prefix: &str) -> Result<(), VarNameError> {
        self.name.check_full(self.scope, prefix)
    }
}

impl fmt::Display for VarDecl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.<prefix>.{}", self.scope, self.name)
    }
}

/// The `register-var-names` line for `spoe.conf` (each name once, in order).
///
/// ```
/// use spoa_runtime::{Scope, VarDecl, vars};
/// let d = [VarDecl::new(Scope::Transaction, "a"), VarDecl::new(Scope::Session, "a"), VarDecl::new(Scope::Transaction, "b")];
/// assert_eq!(vars::register_var_names(&d), "register-var-names a b");
/// ```
pub fn register_var_names(decls: &[VarDecl]) -> String {
    let mut names: Vec<&str> = Vec::new();
    for d in decls {
        if !names.contains(&d.name.as_str()) {
            names.push(d.name.as_str());
        }
    }
    let mut line = String::from("register-var-names");
    for n in names {
        line.push(' ');
        line.push_str(n);
    }
    line
}

/// Checks every declaration against the configured `var-prefix`; the error names the
/// variable.
///
/// ```
/// use spoa_runtime::{Scope, VarDecl, vars};
/// let d = [VarDecl::new(Scope::Transaction, "a_rather_long_variable_name")];
/// let err = vars::check(&d, "a_rather_long_prefix_for_an_agent").unwrap_err();
/// assert!(err.to_string().starts_with("txn.a_rather_long_prefix_for_an_agent.a_rather_long_variable_name: "), "{err}");
/// ```
pub fn check(decls: &[VarDecl], prefix: &str) -> Result<(), DeclError> {
    for d in decls {
        d.check(prefix).map_err(|error| DeclError {
            var: d.full_name(prefix),
            error,
        })?;
    }
    Ok(())
}

/// A declared variable HAProxy would not set with the configured prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeclError {
    /// `scope.prefix.name`.
    pub var: String,
    /// Why.
    pub error: VarNameError,
}

impl fmt::Display for DeclError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.var, self.error)
    }
}

impl std::error::Error for DeclError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}
