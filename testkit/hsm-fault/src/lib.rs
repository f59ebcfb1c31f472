#![doc = include_str!("../README.md")]
// The wrappers carry the names of the PKCS#11 functions they stand in for.
#![allow(non_snake_case)]

use std::collections::HashMap;
use std::ffi::c_void;
use std::path::PathBuf;
use std::ptr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, OnceLock, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use cryptoki_sys::{
    CKF_TOKEN_PRESENT, CKR_ARGUMENTS_BAD, CKR_DEVICE_REMOVED, CKR_GENERAL_ERROR, CKR_OK,
    CKR_SESSION_CLOSED, CKR_SESSION_HANDLE_INVALID, CKR_TOKEN_NOT_PRESENT, CK_ATTRIBUTE, CK_BBOOL,
    CK_BYTE, CK_FALSE, CK_FLAGS, CK_FUNCTION_LIST, CK_MECHANISM, CK_MECHANISM_INFO,
    CK_MECHANISM_TYPE, CK_NOTIFY, CK_OBJECT_HANDLE, CK_RV, CK_SESSION_HANDLE, CK_SESSION_INFO,
    CK_SLOT_ID, CK_SLOT_INFO, CK_TOKEN_INFO, CK_ULONG, CK_USER_TYPE, CK_UTF8CHAR, CK_VERSION,
};

const DEFAULT_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// What the control file commands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Control {
    generation: u64,
    down: bool,
}

const HEALTHY: Control = Control {
    generation: 0,
    down: false,
};

impl Control {
    /// `<generation> down` or `<generation> up`, surrounding white space allowed.
    fn parse(text: &str) -> Option<Control> {
        let mut words = text.split_whitespace();
        let generation = words.next()?.parse().ok()?;
        let down = match words.next()? {
            "down" => true,
            "up" => false,
            _ => return None,
        };
        words
            .next()
            .is_none()
            .then_some(Control { generation, down })
    }
}

/// The real module and the list handed out in its stead.
struct Shim {
    /// Never unloaded: `real`'s function pointers point into it.
    _library: libloading::Library,
    real: CK_FUNCTION_LIST,
    wrapped: CK_FUNCTION_LIST,
    control_file: Option<PathBuf>,
}

static SHIM: OnceLock<Result<Shim, String>> = OnceLock::new();

fn shim() -> Option<&'static Shim> {
    SHIM.get().and_then(|loaded| loaded.as_ref().ok())
}

/// The open sessions, by handle: the generation and slot each was opened in.
///
/// Calls on a session hold the table shared from the moment they read the control file until
/// the real module answers; calls that open or end sessions hold it exclusively across the
/// real module's call. So a handle the module hands out again is never confused with the
/// session it named before, and the logout of a reset (in `C_OpenSession`) waits for the calls
/// in flight: no call that was let through runs on a session logged out under it (a key search
/// on it would find nothing, as if the key were not in the token).
struct Sessions {
    opened: HashMap<CK_SESSION_HANDLE, (u64, CK_SLOT_ID)>,
    /// The newest generation a session was opened in: the first one opened in a later
    /// generation finds the application logged out, as after a device reset.
    generation: Option<u64>,
}

static SESSIONS: LazyLock<RwLock<Sessions>> = LazyLock::new(|| {
    RwLock::new(Sessions {
        opened: HashMap::new(),
        generation: None,
    })
});

// A panic cannot unwind out of an `extern "C"` function (it aborts), so nothing poisons the
// table half-way; take it whatever.
fn sessions() -> RwLockReadGuard<'static, Sessions> {
    SESSIONS.read().unwrap_or_else(PoisonError::into_inner)
}

fn sessions_mut() -> RwLockWriteGuard<'static, Sessions> {
    SESSIONS.write().unwrap_or_else(PoisonError::into_inner)
}

/// The control file's command now. Unreadable or malformed: healthy, said once on stderr (it
/// is the process's log), so that a test whose fault did not take knows why.
fn control() -> Control {
    let Some(path) = shim().and_then(|shim| shim.control_file.as_ref()) else {
        return HEALTHY;
    };
    let now = match std::fs::read_to_string(path) {
        Ok(text) => Control::parse(&text).unwrap_or_else(|| {
            complain(&format!("{}: not `<generation> down|up`", path.display()));
            HEALTHY
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => HEALTHY,
        Err(e) => {
            complain(&format!("{}: {e}", path.display()));
            HEALTHY
        }
    };
    announce(now);
    now
}

/// Notes each change of command in the process's log, once, as this process first sees it.
fn announce(now: Control) {
    static SEEN: AtomicU64 = AtomicU64::new(u64::MAX);
    let code = now.generation.wrapping_mul(2) | u64::from(now.down);
    if SEEN.swap(code, Ordering::Relaxed) != code && code != 0 {
        let state = if now.down { "down" } else { "up" };
        eprintln!(
            "shomei-hsm-fault: HSM {state}, generation {}",
            now.generation
        );
    }
}

fn complain(message: &str) {
    static SAID: AtomicU64 = AtomicU64::new(0);
    if SAID.fetch_add(1, Ordering::Relaxed) == 0 {
        eprintln!("shomei-hsm-fault: {message}; taken as healthy");
    }
}

/// Calls the real module's function `$name`.
macro_rules! forward {
    ($name:ident($($arg:expr),*)) => {
        match shim().and_then(|shim| shim.real.$name) {
            // SAFETY: the real module's own entry point, given exactly what our caller gave us,
            // whose validity the PKCS#11 contract puts on the caller; the module stays loaded.
            Some(real) => unsafe { real($($arg),*) },
            // A wrapper is installed only where the real module has the function.
            None => CKR_GENERAL_ERROR,
        }
    };
}

/// Why a call on `session` is refused now, if it is.
fn refusal(sessions: &Sessions, session: CK_SESSION_HANDLE) -> Option<CK_RV> {
    let now = control();
    if now.down {
        // "The token was removed from its slot during the execution of the function": the
        // session's token went away under it. What a network HSM's client answers for a session
        // once its connection is gone, and what tells an application the device (not the
        // request) failed.
        return Some(CKR_DEVICE_REMOVED);
    }
    match sessions.opened.get(&session) {
        Some(&(generation, _)) if generation != now.generation => Some(CKR_SESSION_HANDLE_INVALID),
        _ => None,
    }
}

/// The wrappers of the calls that name a session (all but `C_OpenSession` and
/// `C_CloseSession`): refused while the device is gone or when the session is from another
/// generation, forwarded otherwise.
macro_rules! session_calls {
    ($($name:ident($($arg:ident: $ty:ty),*);)*) => {
        $(
            unsafe extern "C" fn $name(session: CK_SESSION_HANDLE, $($arg: $ty),*) -> CK_RV {
                let sessions = sessions();
                match refusal(&sessions, session) {
                    Some(rv) => rv,
                    None => forward!($name(session $(, $arg)*)),
                }
            }
        )*

        fn wrap_session_calls(list: &mut CK_FUNCTION_LIST) {
            $(
                if list.$name.is_some() {
                    list.$name = Some($name);
                }
            )*
        }
    };
}

session_calls! {
    C_InitPIN(pin: *mut CK_UTF8CHAR, pin_len: CK_ULONG);
    C_SetPIN(old: *mut CK_UTF8CHAR, old_len: CK_ULONG, new: *mut CK_UTF8CHAR, new_len: CK_ULONG);
    C_GetSessionInfo(info: *mut CK_SESSION_INFO);
    C_GetOperationState(state: *mut CK_BYTE, state_len: *mut CK_ULONG);
    C_SetOperationState(
        state: *mut CK_BYTE,
        state_len: CK_ULONG,
        encryption_key: CK_OBJECT_HANDLE,
        authentication_key: CK_OBJECT_HANDLE
    );
    C_Login(user_type: CK_USER_TYPE, pin: *mut CK_UTF8CHAR, pin_len: CK_ULONG);
    C_Logout();
    C_CreateObject(
        template: *mut CK_ATTRIBUTE,
        count: CK_ULONG,
        object: *mut CK_OBJECT_HANDLE
    );
    C_CopyObject(
        object: CK_OBJECT_HANDLE,
        template: *mut CK_ATTRIBUTE,
        count: CK_ULONG,
        new_object: *mut CK_OBJECT_HANDLE
    );
    C_DestroyObject(object: CK_OBJECT_HANDLE);
    C_GetObjectSize(object: CK_OBJECT_HANDLE, size: *mut CK_ULONG);
    C_GetAttributeValue(object: CK_OBJECT_HANDLE, template: *mut CK_ATTRIBUTE, count: CK_ULONG);
    C_SetAttributeValue(object: CK_OBJECT_HANDLE, template: *mut CK_ATTRIBUTE, count: CK_ULONG);
    C_FindObjectsInit(template: *mut CK_ATTRIBUTE, count: CK_ULONG);
    C_FindObjects(objects: *mut CK_OBJECT_HANDLE, max: CK_ULONG, found: *mut CK_ULONG);
    C_FindObjectsFinal();
    C_EncryptInit(mechanism: *mut CK_MECHANISM, key: CK_OBJECT_HANDLE);
    C_Encrypt(data: *mut CK_BYTE, data_len: CK_ULONG, out: *mut CK_BYTE, out_len: *mut CK_ULONG);
    C_EncryptUpdate(part: *mut CK_BYTE, part_len: CK_ULONG, out: *mut CK_BYTE, out_len: *mut CK_ULONG);
    C_EncryptFinal(out: *mut CK_BYTE, out_len: *mut CK_ULONG);
    C_DecryptInit(mechanism: *mut CK_MECHANISM, key: CK_OBJECT_HANDLE);
    C_Decrypt(data: *mut CK_BYTE, data_len: CK_ULONG, out: *mut CK_BYTE, out_len: *mut CK_ULONG);
    C_DecryptUpdate(part: *mut CK_BYTE, part_len: CK_ULONG, out: *mut CK_BYTE, out_len: *mut CK_ULONG);
    C_DecryptFinal(out: *mut CK_BYTE, out_len: *mut CK_ULONG);
    C_DigestInit(mechanism: *mut CK_MECHANISM);
    C_Digest(data: *mut CK_BYTE, data_len: CK_ULONG, out: *mut CK_BYTE, out_len: *mut CK_ULONG);
    C_DigestUpdate(part: *mut CK_BYTE, part_len: CK_ULONG);
    C_DigestKey(key: CK_OBJECT_HANDLE);
    C_DigestFinal(out: *mut CK_BYTE, out_len: *mut CK_ULONG);
    C_SignInit(mechanism: *mut CK_MECHANISM, key: CK_OBJECT_HANDLE);
    C_Sign(data: *mut CK_BYTE, data_len: CK_ULONG, out: *mut CK_BYTE, out_len: *mut CK_ULONG);
    C_SignUpdate(part: *mut CK_BYTE, part_len: CK_ULONG);
    C_SignFinal(out: *mut CK_BYTE, out_len: *mut CK_ULONG);
    C_SignRecoverInit(mechanism: *mut CK_MECHANISM, key: CK_OBJECT_HANDLE);
    C_SignRecover(data: *mut CK_BYTE, data_len: CK_ULONG, out: *mut CK_BYTE, out_len: *mut CK_ULONG);
    C_VerifyInit(mechanism: *mut CK_MECHANISM, key: CK_OBJECT_HANDLE);
    C_Verify(data: *mut CK_BYTE, data_len: CK_ULONG, signature: *mut CK_BYTE, signature_len: CK_ULONG);
    C_VerifyUpdate(part: *mut CK_BYTE, part_len: CK_ULONG);
    C_VerifyFinal(signature: *mut CK_BYTE, signature_len: CK_ULONG);
    C_VerifyRecoverInit(mechanism: *mut CK_MECHANISM, key: CK_OBJECT_HANDLE);
    C_VerifyRecover(signature: *mut CK_BYTE, signature_len: CK_ULONG, out: *mut CK_BYTE, out_len: *mut CK_ULONG);
    C_DigestEncryptUpdate(part: *mut CK_BYTE, part_len: CK_ULONG, out: *mut CK_BYTE, out_len: *mut CK_ULONG);
    C_DecryptDigestUpdate(part: *mut CK_BYTE, part_len: CK_ULONG, out: *mut CK_BYTE, out_len: *mut CK_ULONG);
    C_SignEncryptUpdate(part: *mut CK_BYTE, part_len: CK_ULONG, out: *mut CK_BYTE, out_len: *mut CK_ULONG);
    C_DecryptVerifyUpdate(part: *mut CK_BYTE, part_len: CK_ULONG, out: *mut CK_BYTE, out_len: *mut CK_ULONG);
    C_GenerateKey(
        mechanism: *mut CK_MECHANISM,
        template: *mut CK_ATTRIBUTE,
        count: CK_ULONG,
        key: *mut CK_OBJECT_HANDLE
    );
    C_GenerateKeyPair(
        mechanism: *mut CK_MECHANISM,
        public_template: *mut CK_ATTRIBUTE,
        public_count: CK_ULONG,
        private_template: *mut CK_ATTRIBUTE,
        private_count: CK_ULONG,
        public_key: *mut CK_OBJECT_HANDLE,
        private_key: *mut CK_OBJECT_HANDLE
    );
    C_WrapKey(
        mechanism: *mut CK_MECHANISM,
        wrapping_key: CK_OBJECT_HANDLE,
        key: CK_OBJECT_HANDLE,
        wrapped: *mut CK_BYTE,
        wrapped_len: *mut CK_ULONG
    );
    C_UnwrapKey(
        mechanism: *mut CK_MECHANISM,
        unwrapping_key: CK_OBJECT_HANDLE,
        wrapped: *mut CK_BYTE,
        wrapped_len: CK_ULONG,
        template: *mut CK_ATTRIBUTE,
        count: CK_ULONG,
        key: *mut CK_OBJECT_HANDLE
    );
    C_DeriveKey(
        mechanism: *mut CK_MECHANISM,
        base_key: CK_OBJECT_HANDLE,
        template: *mut CK_ATTRIBUTE,
        count: CK_ULONG,
        key: *mut CK_OBJECT_HANDLE
    );
    C_SeedRandom(seed: *mut CK_BYTE, seed_len: CK_ULONG);
    C_GenerateRandom(out: *mut CK_BYTE, out_len: CK_ULONG);
    C_GetFunctionStatus();
    C_CancelFunction();
}

/// Calls that name the slot: answered as for a removed token while the device is gone,
/// `CKR_TOKEN_NOT_PRESENT` ("the token was not present in its slot at the time that the function
/// was invoked", PKCS#11 2.40 §5.1): the call starts after the device went away, so nothing was
/// removed during it.
macro_rules! slot_calls {
    ($($name:ident($($arg:ident: $ty:ty),*);)*) => {
        $(
            unsafe extern "C" fn $name(slot: CK_SLOT_ID, $($arg: $ty),*) -> CK_RV {
                if control().down {
                    CKR_TOKEN_NOT_PRESENT
                } else {
                    forward!($name(slot $(, $arg)*))
                }
            }
        )*

        fn wrap_slot_calls(list: &mut CK_FUNCTION_LIST) {
            $(
                if list.$name.is_some() {
                    list.$name = Some($name);
                }
            )*
        }
    };
}

slot_calls! {
    C_GetTokenInfo(info: *mut CK_TOKEN_INFO);
    C_GetMechanismList(mechanisms: *mut CK_MECHANISM_TYPE, count: *mut CK_ULONG);
    C_GetMechanismInfo(mechanism: CK_MECHANISM_TYPE, info: *mut CK_MECHANISM_INFO);
    C_InitToken(pin: *mut CK_UTF8CHAR, pin_len: CK_ULONG, label: *mut CK_UTF8CHAR);
}

/// No slot holds a token while the device is gone.
unsafe extern "C" fn C_GetSlotList(
    token_present: CK_BBOOL,
    slots: *mut CK_SLOT_ID,
    count: *mut CK_ULONG,
) -> CK_RV {
    if token_present == CK_FALSE || !control().down {
        return forward!(C_GetSlotList(token_present, slots, count));
    }
    if count.is_null() {
        return CKR_ARGUMENTS_BAD;
    }
    // SAFETY: `count` is the caller's non-null out-parameter (PKCS#11: a CK_ULONG to write).
    unsafe { *count = 0 };
    CKR_OK
}

/// The slot is there, its token is not, while the device is gone.
unsafe extern "C" fn C_GetSlotInfo(slot: CK_SLOT_ID, info: *mut CK_SLOT_INFO) -> CK_RV {
    let rv = forward!(C_GetSlotInfo(slot, info));
    if rv == CKR_OK && !info.is_null() && control().down {
        // SAFETY: the real module has just filled in the caller's non-null CK_SLOT_INFO.
        unsafe { (*info).flags &= !CKF_TOKEN_PRESENT };
    }
    rv
}

/// No session on a token that is not there (`CKR_TOKEN_NOT_PRESENT`, as for the slot calls);
/// the first session opened in a new generation finds the application logged out.
unsafe extern "C" fn C_OpenSession(
    slot: CK_SLOT_ID,
    flags: CK_FLAGS,
    application: *mut c_void,
    notify: CK_NOTIFY,
    session: *mut CK_SESSION_HANDLE,
) -> CK_RV {
    let mut sessions = sessions_mut();
    let now = control();
    if now.down {
        return CKR_TOKEN_NOT_PRESENT;
    }
    let rv = forward!(C_OpenSession(slot, flags, application, notify, session));
    if rv != CKR_OK || session.is_null() {
        return rv;
    }
    // SAFETY: the real module returned CKR_OK, so it wrote the new handle to the caller's
    // non-null out-parameter.
    let handle = unsafe { *session };
    if sessions
        .generation
        .is_some_and(|generation| generation < now.generation)
    {
        // The device was reset since the last session was opened: its login is gone. (The
        // answer is of no interest: not logged in, or logged out now.)
        forward!(C_Logout(handle));
    }
    sessions.generation = Some(sessions.generation.unwrap_or(0).max(now.generation));
    sessions.opened.insert(handle, (now.generation, slot));
    CKR_OK
}

unsafe extern "C" fn C_CloseSession(session: CK_SESSION_HANDLE) -> CK_RV {
    let mut sessions = sessions_mut();
    let rv = forward!(C_CloseSession(session));
    if matches!(rv, CKR_OK | CKR_SESSION_HANDLE_INVALID | CKR_SESSION_CLOSED) {
        sessions.opened.remove(&session);
    }
    rv
}

unsafe extern "C" fn C_CloseAllSessions(slot: CK_SLOT_ID) -> CK_RV {
    let mut sessions = sessions_mut();
    let rv = forward!(C_CloseAllSessions(slot));
    if rv == CKR_OK {
        sessions
            .opened
            .retain(|_, &mut (_, opened_in)| opened_in != slot);
    }
    rv
}

unsafe extern "C" fn C_Finalize(reserved: *mut c_void) -> CK_RV {
    let mut sessions = sessions_mut();
    let rv = forward!(C_Finalize(reserved));
    if rv == CKR_OK {
        sessions.opened.clear();
    }
    rv
}

/// Loads the real module and builds the list handed out in its stead.
fn load() -> Result<Shim, String> {
    let module = std::env::var_os("SHOMEI_HSM_FAULT_MODULE")
        .map_or_else(|| PathBuf::from(DEFAULT_MODULE), PathBuf::from);
    let failed =
        |what: &str, e: &dyn std::fmt::Display| format!("{what} {}: {e}", module.display());
    // SAFETY: loading a PKCS#11 module runs its initialisers, as the application loading this
    // one would have run them by loading the real module itself.
    let library =
        unsafe { libloading::Library::new(&module) }.map_err(|e| failed("loading", &e))?;
    let real = {
        // SAFETY: `C_GetFunctionList` has this type in every PKCS#11 module (the standard's
        // pkcs11f.h); the symbol is used before `library` moves.
        let get_function_list = unsafe {
            library.get::<unsafe extern "C" fn(*mut *mut CK_FUNCTION_LIST) -> CK_RV>(
                b"C_GetFunctionList\0",
            )
        }
        .map_err(|e| failed("no C_GetFunctionList in", &e))?;
        let mut list: *mut CK_FUNCTION_LIST = ptr::null_mut();
        // SAFETY: a valid pointer for the module to write its list's address to.
        let rv = unsafe { get_function_list(&mut list) };
        if rv != CKR_OK || list.is_null() {
            return Err(failed("C_GetFunctionList of", &format!("CK_RV {rv:#x}")));
        }
        // SAFETY: the module's list lives as long as the module stays loaded (for good); only
        // its PKCS#11 2.x part, which every version's list starts with, is copied.
        unsafe { *list }
    };

    let mut wrapped = real;
    // What the copy holds, whatever the real module's list is (a 3.x list is longer).
    wrapped.version = CK_VERSION {
        major: 2,
        minor: 40,
    };
    wrapped.C_GetFunctionList = Some(C_GetFunctionList);
    wrap_session_calls(&mut wrapped);
    wrap_slot_calls(&mut wrapped);
    macro_rules! install {
        ($($name:ident),*) => {
            $(
                if wrapped.$name.is_some() {
                    wrapped.$name = Some($name);
                }
            )*
        };
    }
    install!(
        C_GetSlotList,
        C_GetSlotInfo,
        C_OpenSession,
        C_CloseSession,
        C_CloseAllSessions,
        C_Finalize
    );
    Ok(Shim {
        _library: library,
        real,
        wrapped,
        control_file: std::env::var_os("SHOMEI_HSM_FAULT_FILE").map(PathBuf::from),
    })
}

/// The module's one exported entry point: the real module's function list, with the wrappers
/// above in place of its own functions where they stand in.
///
/// # Safety
///
/// `list` is null or valid for writing a pointer (PKCS#11). The list written there must not be
/// written through: it is shared by every caller.
#[no_mangle]
pub unsafe extern "C" fn C_GetFunctionList(list: *mut *mut CK_FUNCTION_LIST) -> CK_RV {
    if list.is_null() {
        return CKR_ARGUMENTS_BAD;
    }
    match SHIM.get_or_init(load) {
        Ok(shim) => {
            // SAFETY: `list` is the caller's non-null out-parameter; the list it receives lives
            // in a static for good and is only read (PKCS#11 applications call through it).
            unsafe { *list = ptr::from_ref(&shim.wrapped).cast_mut() };
            CKR_OK
        }
        Err(reason) => {
            eprintln!("shomei-hsm-fault: {reason}");
            CKR_GENERAL_ERROR
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_control_file_names_a_generation_and_a_state() {
        let control = |generation, down| Some(Control { generation, down });
        assert_eq!(Control::parse("3 down\n"), control(3, true));
        assert_eq!(Control::parse("  4\tup "), control(4, false));
        for bad in ["", "down", "3", "3 sideways", "-1 up", "3 up now"] {
            assert_eq!(Control::parse(bad), None, "{bad:?}");
        }
    }
}
