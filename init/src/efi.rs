//! What the boot loader tells stage 1 through EFI variables: the partition UUID of the ESP
//! it was started from (systemd-boot's `LoaderDevicePartUUID`), which names the boot disk.

use std::path::Path;

/// systemd-boot's vendor GUID; `LoaderDevicePartUUID` is set by systemd-boot (and
/// systemd-stub) to the PARTUUID of the ESP the loader image was read from.
pub const LOADER_DEVICE_PART_UUID: &str =
    "LoaderDevicePartUUID-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f";

/// Where the firmware's variables are mounted (efivarfs).
pub const EFIVARS: &str = "/sys/firmware/efi/efivars";

/// Decode an efivarfs file of `LoaderDevicePartUUID`: 4 bytes of attributes, then the UUID
/// as a UTF-16LE string (systemd-boot writes it upper case, NUL-terminated). `None` when it
/// is not a UUID.
pub fn parse_loader_partuuid(raw: &[u8]) -> Option<uuid::Uuid> {
    let text = raw.get(4..)?;
    if text.len() % 2 != 0 {
        return None;
    }
    let units: Vec<u16> = text
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|u| *u != 0)
        .collect();
    let s = String::from_utf16(&units).ok()?;
    uuid::Uuid::parse_str(s.trim()).ok()
}

/// The ESP's partition UUID from the variable under `efivars` (an efivarfs mount). `None`
/// when the variable is absent (no systemd-boot: a direct kernel boot, or BIOS).
pub fn loader_partuuid(efivars: &Path) -> Result<Option<uuid::Uuid>, EfiError> {
    let path = efivars.join(LOADER_DEVICE_PART_UUID);
    match std::fs::read(&path) {
        Ok(raw) => parse_loader_partuuid(&raw)
            .map(Some)
            .ok_or_else(|| EfiError::BadValue {
                path: path.display().to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(EfiError::Read {
            path: path.display().to_string(),
            source,
        }),
    }
}

/// Reading the loader's variable failed.
#[derive(Debug, thiserror::Error)]
pub enum EfiError {
    #[error("cannot read the EFI variable {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the EFI variable {path} holds no partition UUID")]
    BadValue { path: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn efivar(s: &str) -> Vec<u8> {
        let mut raw = vec![0x06, 0, 0, 0]; // BOOTSERVICE_ACCESS | RUNTIME_ACCESS
        for u in s.encode_utf16().chain([0]) {
            raw.extend_from_slice(&u.to_le_bytes());
        }
        raw
    }

    #[test]
    fn decodes_systemd_boots_variable() {
        let u = "0F6C3A2E-8F1D-4B7A-9C51-3E2D1A0B9C8D";
        assert_eq!(
            parse_loader_partuuid(&efivar(u)),
            Some(uuid::Uuid::parse_str(&u.to_lowercase()).unwrap())
        );
        assert_eq!(parse_loader_partuuid(&efivar("not a uuid")), None);
        assert_eq!(parse_loader_partuuid(&[6, 0, 0]), None);
        assert_eq!(parse_loader_partuuid(&[6, 0, 0, 0, 0x41]), None);
    }

    #[test]
    fn reads_the_variable_or_reports_its_absence() {
        let d = std::env::temp_dir().join(format!("berth-init-efi-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        assert!(loader_partuuid(&d).unwrap().is_none());
        let u = "0f6c3a2e-8f1d-4b7a-9c51-3e2d1a0b9c8d";
        std::fs::write(d.join(LOADER_DEVICE_PART_UUID), efivar(u)).unwrap();
        assert_eq!(
            loader_partuuid(&d)
                .unwrap()
                .map(|x| x.to_string())
                .as_deref(),
            Some(u)
        );
        std::fs::write(d.join(LOADER_DEVICE_PART_UUID), [6, 0, 0, 0, b'x', 0]).unwrap();
        let e = loader_partuuid(&d).unwrap_err().to_string();
        assert!(e.contains(LOADER_DEVICE_PART_UUID), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
