//! Who may call what: the roles of remote API clients and the one table that gives every
//! `org.berth.Manager1` method the least role allowed to call it.
//!
//! A remote client's role comes from its certificate's Subject O (`admin`, `operator` or
//! `reader`); the local socket and the serial bridge are `admin`. Roles are ordered:
//! `admin` may do everything `operator` may, and `operator` everything `reader` may.

use std::fmt;

/// A client's role, least privileged first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Status, containers, stats, images, update status, config with secrets redacted.
    Reader,
    /// Reader, plus start, stop, restart, logs, run, rm, pull, updates and reboot.
    Operator,
    /// Everything.
    Admin,
}

impl Role {
    /// Every role, least privileged first.
    pub const ALL: [Role; 3] = [Role::Reader, Role::Operator, Role::Admin];

    /// The name used in certificates (Subject O) and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    /// Parse a role name (exact, lower case).
    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// Whether this role may call `method`.
    pub fn may_call(self, method: Method) -> bool {
        self >= method.role()
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

macro_rules! methods {
    ($($name:ident => $role:ident,)*) => {
        /// Every method of `org.berth.Manager1`, named as on D-Bus.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Method {
            $($name,)*
        }

        impl Method {
            /// Every method, in table order.
            pub const ALL: &'static [Method] = &[$(Method::$name,)*];

            /// The D-Bus member name.
            pub fn name(self) -> &'static str {
                match self {
                    $(Method::$name => stringify!($name),)*
                }
            }

            /// The least role allowed to call this method: the table.
            pub fn role(self) -> Role {
                match self {
                    $(Method::$name => Role::$role,)*
                }
            }
        }
    };
}

// The table. A method missing here does not compile on the server (each method names its
// entry); a D-Bus method with no entry is caught by sysd's test that compares this table
// with the served interface.
methods! {
    Status => Reader,
    Ps => Reader,
    Stats => Reader,
    Images => Reader,
    Config => Reader,
    UpdateStatus => Reader,
    ApiStatus => Reader,
    MachineId => Reader,
    Start => Operator,
    Stop => Operator,
    Restart => Operator,
    Logs => Operator,
    LogsFrom => Operator,
    Run => Operator,
    Remove => Operator,
    Pull => Operator,
    RemoveImage => Operator,
    UpdateCheck => Operator,
    UpdateApply => Operator,
    UpdateRollback => Operator,
    Reboot => Operator,
    Exec => Admin,
    ExecStart => Admin,
    ExecInput => Admin,
    ExecResize => Admin,
    ExecWait => Admin,
    ConfigApply => Admin,
    PowerOff => Admin,
    KillSupervisor => Admin,
    PkiIssue => Admin,
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered_and_parse_back() {
        for r in Role::ALL {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
        assert_eq!(Role::parse("Admin"), None);
        assert_eq!(Role::parse(""), None);
        assert!(Role::Admin > Role::Operator && Role::Operator > Role::Reader);
    }

    #[test]
    fn the_table_names_each_method_once() {
        let mut names: Vec<_> = Method::ALL.iter().map(|m| m.name()).collect();
        let n = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), n);
    }

    #[test]
    fn reader_cannot_exec_and_admin_can_do_everything() {
        assert!(!Role::Reader.may_call(Method::Exec));
        assert!(!Role::Reader.may_call(Method::Run));
        assert!(!Role::Reader.may_call(Method::ConfigApply));
        assert!(!Role::Reader.may_call(Method::UpdateApply));
        assert!(!Role::Operator.may_call(Method::Exec));
        assert!(!Role::Operator.may_call(Method::ConfigApply));
        assert!(Role::Operator.may_call(Method::Reboot));
        assert!(Role::Reader.may_call(Method::Ps));
        assert!(Role::Reader.may_call(Method::ApiStatus));
        assert!(!Role::Operator.may_call(Method::PkiIssue));
        assert!(Method::ALL.iter().all(|m| Role::Admin.may_call(*m)));
    }
}
