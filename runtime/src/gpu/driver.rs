//! A thin layer over the CUDA driver API, loaded at run time with `dlopen`.
//!
//! Why our own layer and not `cudarc`: the runtime needs two dozen entry points, the
//! binary must start (and fall back to the CPU) on machines without any CUDA library,
//! and nothing CUDA may be needed at build time. `dlopen("libcuda.so.1")` through
//! `libc` (already in the lock file) gives exactly that in one small file, with no
//! generated bindings and no toolkit version to match: the driver JIT-compiles the PTX.
//!
//! Every call returns `Result<_, GpuError>`: a failing `CUresult` becomes an error that
//! names the call and carries the driver's own message (`cuGetErrorString`).

use std::ffi::{c_char, c_int, c_uint, c_void, CStr, CString};

use super::GpuError;

pub type CuResult = c_int;
pub type CuDevice = c_int;
pub type CuDevicePtr = u64;
pub type Handle = *mut c_void;

/// `CU_JIT_ERROR_LOG_BUFFER` and `CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES` (cuda.h).
const CU_JIT_ERROR_LOG_BUFFER: c_int = 5;
const CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES: c_int = 6;
/// `CU_STREAM_NON_BLOCKING`: the stream does not synchronise with the legacy stream.
const CU_STREAM_NON_BLOCKING: c_uint = 1;
/// `CU_STREAM_CAPTURE_MODE_THREAD_LOCAL`.
const CU_STREAM_CAPTURE_MODE_THREAD_LOCAL: c_int = 1;

/// The driver entry points the runtime uses, resolved from `libcuda.so.1`.
#[allow(non_snake_case)]
struct Fns {
    cuInit: unsafe extern "C" fn(c_uint) -> CuResult,
    cuDeviceGetCount: unsafe extern "C" fn(*mut c_int) -> CuResult,
    cuDeviceGet: unsafe extern "C" fn(*mut CuDevice, c_int) -> CuResult,
    cuDeviceGetName: unsafe extern "C" fn(*mut c_char, c_int, CuDevice) -> CuResult,
    cuDevicePrimaryCtxRetain: unsafe extern "C" fn(*mut Handle, CuDevice) -> CuResult,
    cuDevicePrimaryCtxRelease: unsafe extern "C" fn(CuDevice) -> CuResult,
    cuCtxSetCurrent: unsafe extern "C" fn(Handle) -> CuResult,
    cuCtxSynchronize: unsafe extern "C" fn() -> CuResult,
    cuModuleLoadDataEx: unsafe extern "C" fn(
        *mut Handle,
        *const c_void,
        c_uint,
        *mut c_int,
        *mut *mut c_void,
    ) -> CuResult,
    cuModuleUnload: unsafe extern "C" fn(Handle) -> CuResult,
    cuModuleGetFunction: unsafe extern "C" fn(*mut Handle, Handle, *const c_char) -> CuResult,
    cuMemAlloc: unsafe extern "C" fn(*mut CuDevicePtr, usize) -> CuResult,
    cuMemFree: unsafe extern "C" fn(CuDevicePtr) -> CuResult,
    cuMemsetD8: unsafe extern "C" fn(CuDevicePtr, u8, usize) -> CuResult,
    cuMemcpyHtoD: unsafe extern "C" fn(CuDevicePtr, *const c_void, usize) -> CuResult,
    cuMemcpyHtoDAsync: unsafe extern "C" fn(CuDevicePtr, *const c_void, usize, Handle) -> CuResult,
    cuMemcpyDtoHAsync: unsafe extern "C" fn(*mut c_void, CuDevicePtr, usize, Handle) -> CuResult,
    cuLaunchKernel: unsafe extern "C" fn(
        Handle,
        c_uint,
        c_uint,
        c_uint,
        c_uint,
        c_uint,
        c_uint,
        c_uint,
        Handle,
        *mut *mut c_void,
        *mut *mut c_void,
    ) -> CuResult,
    cuStreamCreate: unsafe extern "C" fn(*mut Handle, c_uint) -> CuResult,
    cuStreamDestroy: unsafe extern "C" fn(Handle) -> CuResult,
    cuStreamSynchronize: unsafe extern "C" fn(Handle) -> CuResult,
    cuStreamBeginCapture: unsafe extern "C" fn(Handle, c_int) -> CuResult,
    cuStreamEndCapture: unsafe extern "C" fn(Handle, *mut Handle) -> CuResult,
    cuGraphInstantiateWithFlags: unsafe extern "C" fn(*mut Handle, Handle, u64) -> CuResult,
    cuGraphLaunch: unsafe extern "C" fn(Handle, Handle) -> CuResult,
    cuGraphDestroy: unsafe extern "C" fn(Handle) -> CuResult,
    cuGraphExecDestroy: unsafe extern "C" fn(Handle) -> CuResult,
    cuGetErrorString: unsafe extern "C" fn(CuResult, *mut *const c_char) -> CuResult,
}

/// The loaded driver library. Kept loaded for the life of the process (the handle is
/// never closed: unloading a driver with live contexts is undefined).
pub struct Driver {
    f: Fns,
}

// SAFETY: the driver API is thread-safe; `Fns` holds plain function pointers.
unsafe impl Send for Driver {}
unsafe impl Sync for Driver {}

/// The last `dlerror()` message, or a placeholder.
fn dl_error() -> String {
    // SAFETY: dlerror returns null or a valid C string owned by libc.
    let msg = unsafe { libc::dlerror() };
    if msg.is_null() {
        "unknown error".into()
    } else {
        // SAFETY: checked non-null above.
        unsafe { CStr::from_ptr(msg) }
            .to_string_lossy()
            .into_owned()
    }
}

/// The function pointer of symbol `name` (NUL-terminated) in `lib`, or `None`.
///
/// # Safety
/// `lib` must be a live `dlopen` handle and `F` a function-pointer type matching the
/// symbol's C signature.
unsafe fn resolve<F: Copy>(lib: *mut c_void, name: &str) -> Option<F> {
    assert_eq!(std::mem::size_of::<F>(), std::mem::size_of::<*mut c_void>());
    // SAFETY: name is NUL-terminated (callers use concat!(.., "\0")).
    let p = unsafe { libc::dlsym(lib, name.as_ptr().cast()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: F is a function pointer of the symbol's signature (caller's contract), and
    // function and data pointers have the same size and representation on the targets
    // the CUDA driver exists for.
    Some(unsafe { std::mem::transmute_copy::<*mut c_void, F>(&p) })
}

impl Driver {
    /// Loads `$MCC_LIBCUDA` if set (tests, unusual installs), else `libcuda.so.1` from
    /// the loader's search path or, failing that, from the directories container
    /// runtimes mount the driver into; then resolves every entry point.
    pub fn load() -> Result<Driver, GpuError> {
        let candidates: Vec<String> = match std::env::var("MCC_LIBCUDA") {
            Ok(name) => vec![name],
            Err(_) => [
                "libcuda.so.1",
                "/usr/local/nvidia/lib64/libcuda.so.1",
                "/usr/lib/x86_64-linux-gnu/libcuda.so.1",
                "/usr/lib64/libcuda.so.1",
                "/usr/lib/wsl/lib/libcuda.so.1",
            ]
            .map(String::from)
            .to_vec(),
        };
        let mut first_error = None;
        let mut lib = std::ptr::null_mut();
        let mut name = String::new();
        for candidate in candidates {
            let c_name = CString::new(candidate.clone()).map_err(|_| GpuError::NoDriver {
                reason: format!("bad library name {candidate:?}"),
            })?;
            // SAFETY: dlopen with a valid C string; the result is checked.
            lib = unsafe { libc::dlopen(c_name.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
            if !lib.is_null() {
                name = candidate;
                break;
            }
            // The first failure (the plain name's) is the one worth reporting.
            let e = dl_error();
            first_error.get_or_insert(e);
        }
        if lib.is_null() {
            return Err(GpuError::NoDriver {
                reason: first_error.unwrap_or_else(|| "libcuda.so.1 not found".into()),
            });
        }
        macro_rules! sym {
            ($field:ident, $symbol:literal) => {
                // SAFETY: lib is a live handle; the symbol is the driver function of
                // the field's exact signature (cuda.h).
                unsafe { resolve(lib, concat!($symbol, "\0")) }.ok_or_else(|| {
                    GpuError::NoDriver {
                        reason: format!("{name} lacks {}", $symbol),
                    }
                })?
            };
        }
        let f = Fns {
            cuInit: sym!(cuInit, "cuInit"),
            cuDeviceGetCount: sym!(cuDeviceGetCount, "cuDeviceGetCount"),
            cuDeviceGet: sym!(cuDeviceGet, "cuDeviceGet"),
            cuDeviceGetName: sym!(cuDeviceGetName, "cuDeviceGetName"),
            cuDevicePrimaryCtxRetain: sym!(cuDevicePrimaryCtxRetain, "cuDevicePrimaryCtxRetain"),
            cuDevicePrimaryCtxRelease: sym!(
                cuDevicePrimaryCtxRelease,
                "cuDevicePrimaryCtxRelease_v2"
            ),
            cuCtxSetCurrent: sym!(cuCtxSetCurrent, "cuCtxSetCurrent"),
            cuCtxSynchronize: sym!(cuCtxSynchronize, "cuCtxSynchronize"),
            cuModuleLoadDataEx: sym!(cuModuleLoadDataEx, "cuModuleLoadDataEx"),
            cuModuleUnload: sym!(cuModuleUnload, "cuModuleUnload"),
            cuModuleGetFunction: sym!(cuModuleGetFunction, "cuModuleGetFunction"),
            cuMemAlloc: sym!(cuMemAlloc, "cuMemAlloc_v2"),
            cuMemFree: sym!(cuMemFree, "cuMemFree_v2"),
            cuMemsetD8: sym!(cuMemsetD8, "cuMemsetD8_v2"),
            cuMemcpyHtoD: sym!(cuMemcpyHtoD, "cuMemcpyHtoD_v2"),
            cuMemcpyHtoDAsync: sym!(cuMemcpyHtoDAsync, "cuMemcpyHtoDAsync_v2"),
            cuMemcpyDtoHAsync: sym!(cuMemcpyDtoHAsync, "cuMemcpyDtoHAsync_v2"),
            cuLaunchKernel: sym!(cuLaunchKernel, "cuLaunchKernel"),
            cuStreamCreate: sym!(cuStreamCreate, "cuStreamCreate"),
            cuStreamDestroy: sym!(cuStreamDestroy, "cuStreamDestroy_v2"),
            cuStreamSynchronize: sym!(cuStreamSynchronize, "cuStreamSynchronize"),
            cuStreamBeginCapture: sym!(cuStreamBeginCapture, "cuStreamBeginCapture_v2"),
            cuStreamEndCapture: sym!(cuStreamEndCapture, "cuStreamEndCapture"),
            cuGraphInstantiateWithFlags: sym!(
                cuGraphInstantiateWithFlags,
                "cuGraphInstantiateWithFlags"
            ),
            cuGraphLaunch: sym!(cuGraphLaunch, "cuGraphLaunch"),
            cuGraphDestroy: sym!(cuGraphDestroy, "cuGraphDestroy"),
            cuGraphExecDestroy: sym!(cuGraphExecDestroy, "cuGraphExecDestroy"),
            cuGetErrorString: sym!(cuGetErrorString, "cuGetErrorString"),
        };
        Ok(Driver { f })
    }

    /// `Ok` for CUDA_SUCCESS, else the call's name and the driver's message.
    fn check(&self, call: &'static str, r: CuResult) -> Result<(), GpuError> {
        if r == 0 {
            return Ok(());
        }
        let mut msg: *const c_char = std::ptr::null();
        // SAFETY: cuGetErrorString writes a static string pointer or leaves null.
        unsafe { (self.f.cuGetErrorString)(r, &mut msg) };
        let message = if msg.is_null() {
            format!("error {r}")
        } else {
            // SAFETY: non-null static C string from the driver.
            unsafe { CStr::from_ptr(msg) }
                .to_string_lossy()
                .into_owned()
        };
        Err(GpuError::Cuda {
            call,
            code: r,
            message,
        })
    }

    pub fn init(&self) -> Result<(), GpuError> {
        // SAFETY: plain driver call.
        self.check("cuInit", unsafe { (self.f.cuInit)(0) })
    }

    pub fn device_count(&self) -> Result<usize, GpuError> {
        let mut n = 0;
        // SAFETY: writes one int.
        self.check("cuDeviceGetCount", unsafe {
            (self.f.cuDeviceGetCount)(&mut n)
        })?;
        Ok(n.max(0) as usize)
    }

    pub fn device(&self, ordinal: usize) -> Result<CuDevice, GpuError> {
        let mut d = 0;
        // SAFETY: writes one device handle.
        self.check("cuDeviceGet", unsafe {
            (self.f.cuDeviceGet)(&mut d, ordinal as c_int)
        })?;
        Ok(d)
    }

    pub fn device_name(&self, dev: CuDevice) -> Result<String, GpuError> {
        let mut buf = [0 as c_char; 256];
        // SAFETY: the driver writes at most len bytes, NUL-terminated.
        self.check("cuDeviceGetName", unsafe {
            (self.f.cuDeviceGetName)(buf.as_mut_ptr(), buf.len() as c_int, dev)
        })?;
        // SAFETY: NUL-terminated within the buffer.
        Ok(unsafe { CStr::from_ptr(buf.as_ptr()) }
            .to_string_lossy()
            .into_owned())
    }

    /// Retains the device's primary context and makes it current on this thread.
    pub fn primary_context(&self, dev: CuDevice) -> Result<Handle, GpuError> {
        let mut ctx = std::ptr::null_mut();
        // SAFETY: writes one context handle.
        self.check("cuDevicePrimaryCtxRetain", unsafe {
            (self.f.cuDevicePrimaryCtxRetain)(&mut ctx, dev)
        })?;
        // SAFETY: ctx is the live context just retained.
        self.check("cuCtxSetCurrent", unsafe { (self.f.cuCtxSetCurrent)(ctx) })?;
        Ok(ctx)
    }

    pub fn release_primary_context(&self, dev: CuDevice) {
        // SAFETY: balanced with primary_context; errors at teardown are ignored.
        unsafe { (self.f.cuDevicePrimaryCtxRelease)(dev) };
    }

    /// Makes `ctx` current on the calling thread (the CLI may call from any thread).
    pub fn set_current(&self, ctx: Handle) -> Result<(), GpuError> {
        // SAFETY: ctx is a live context.
        self.check("cuCtxSetCurrent", unsafe { (self.f.cuCtxSetCurrent)(ctx) })
    }

    pub fn synchronize(&self) -> Result<(), GpuError> {
        // SAFETY: plain driver call.
        self.check("cuCtxSynchronize", unsafe { (self.f.cuCtxSynchronize)() })
    }

    /// JIT-compiles a PTX module; a compile error carries the JIT's log.
    pub fn load_ptx(&self, ptx: &str) -> Result<Handle, GpuError> {
        let image = CString::new(ptx).map_err(|_| GpuError::Ptx {
            log: "the PTX contains a NUL byte".into(),
        })?;
        let mut log = vec![0u8; 16 * 1024];
        let mut opts = [CU_JIT_ERROR_LOG_BUFFER, CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES];
        let mut vals = [log.as_mut_ptr().cast::<c_void>(), log.len() as *mut c_void];
        let mut module = std::ptr::null_mut();
        // SAFETY: image is NUL-terminated; the options array and values match in
        // length; the log buffer outlives the call.
        let r = unsafe {
            (self.f.cuModuleLoadDataEx)(
                &mut module,
                image.as_ptr().cast(),
                opts.len() as c_uint,
                opts.as_mut_ptr(),
                vals.as_mut_ptr(),
            )
        };
        if r != 0 {
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            let text = String::from_utf8_lossy(&log[..end]).into_owned();
            let err = self.check("cuModuleLoadDataEx", r).unwrap_err();
            return Err(GpuError::Ptx {
                log: format!("{err}: {text}"),
            });
        }
        Ok(module)
    }

    pub fn unload(&self, module: Handle) {
        // SAFETY: module is a live module; teardown errors are ignored.
        unsafe { (self.f.cuModuleUnload)(module) };
    }

    pub fn function(&self, module: Handle, name: &str) -> Result<Handle, GpuError> {
        let c = CString::new(name).map_err(|_| GpuError::MissingKernel(name.into()))?;
        let mut f = std::ptr::null_mut();
        // SAFETY: module is live, c is NUL-terminated.
        let r = unsafe { (self.f.cuModuleGetFunction)(&mut f, module, c.as_ptr()) };
        if r != 0 {
            return Err(GpuError::MissingKernel(name.into()));
        }
        Ok(f)
    }

    pub fn alloc(&self, bytes: usize) -> Result<CuDevicePtr, GpuError> {
        let mut p = 0;
        // SAFETY: writes one device pointer.
        self.check("cuMemAlloc", unsafe {
            (self.f.cuMemAlloc)(&mut p, bytes.max(1))
        })?;
        Ok(p)
    }

    pub fn free(&self, p: CuDevicePtr) {
        // SAFETY: p came from alloc; teardown errors are ignored.
        unsafe { (self.f.cuMemFree)(p) };
    }

    pub fn zero(&self, p: CuDevicePtr, bytes: usize) -> Result<(), GpuError> {
        // SAFETY: p..p+bytes lies in one allocation (caller's contract).
        self.check("cuMemsetD8", unsafe { (self.f.cuMemsetD8)(p, 0, bytes) })
    }

    pub fn upload(&self, dst: CuDevicePtr, src: &[u8]) -> Result<(), GpuError> {
        // SAFETY: src is valid for its length; dst has room (caller's contract).
        self.check("cuMemcpyHtoD", unsafe {
            (self.f.cuMemcpyHtoD)(dst, src.as_ptr().cast(), src.len())
        })
    }

    pub fn upload_async(
        &self,
        dst: CuDevicePtr,
        src: &[u8],
        stream: Handle,
    ) -> Result<(), GpuError> {
        // SAFETY: as upload; from pageable memory the copy is staged before return.
        self.check("cuMemcpyHtoDAsync", unsafe {
            (self.f.cuMemcpyHtoDAsync)(dst, src.as_ptr().cast(), src.len(), stream)
        })
    }

    pub fn download_async(
        &self,
        dst: &mut [u8],
        src: CuDevicePtr,
        stream: Handle,
    ) -> Result<(), GpuError> {
        // SAFETY: dst is valid for its length; the caller synchronises the stream
        // before reading it (to pageable memory the call returns after the copy).
        self.check("cuMemcpyDtoHAsync", unsafe {
            (self.f.cuMemcpyDtoHAsync)(dst.as_mut_ptr().cast(), src, dst.len(), stream)
        })
    }

    /// Launches `f` over a `grid x grid_y` grid on `stream` with `args` (every kernel of
    /// the ABI takes only u64 parameters).
    pub fn launch(
        &self,
        f: Handle,
        (grid, grid_y): (u32, u32),
        block: u32,
        stream: Handle,
        args: &[u64],
    ) -> Result<(), GpuError> {
        let mut vals: Vec<u64> = args.to_vec();
        let mut ptrs: Vec<*mut c_void> = vals
            .iter_mut()
            .map(|v| (v as *mut u64).cast::<c_void>())
            .collect();
        // SAFETY: ptrs points at one u64 per kernel parameter, alive for the call (the
        // driver copies parameter values at launch and at capture).
        self.check("cuLaunchKernel", unsafe {
            (self.f.cuLaunchKernel)(
                f,
                grid,
                grid_y,
                1,
                block,
                1,
                1,
                0,
                stream,
                ptrs.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        })
    }

    pub fn stream(&self) -> Result<Handle, GpuError> {
        let mut s = std::ptr::null_mut();
        // SAFETY: writes one stream handle.
        self.check("cuStreamCreate", unsafe {
            (self.f.cuStreamCreate)(&mut s, CU_STREAM_NON_BLOCKING)
        })?;
        Ok(s)
    }

    pub fn destroy_stream(&self, s: Handle) {
        // SAFETY: s is a live stream; teardown errors are ignored.
        unsafe { (self.f.cuStreamDestroy)(s) };
    }

    pub fn sync_stream(&self, s: Handle) -> Result<(), GpuError> {
        // SAFETY: s is a live stream.
        self.check("cuStreamSynchronize", unsafe {
            (self.f.cuStreamSynchronize)(s)
        })
    }

    pub fn begin_capture(&self, s: Handle) -> Result<(), GpuError> {
        // SAFETY: s is a live, non-legacy stream.
        self.check("cuStreamBeginCapture", unsafe {
            (self.f.cuStreamBeginCapture)(s, CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
        })
    }

    /// Ends a capture and instantiates the graph (the graph itself is then freed).
    pub fn end_capture(&self, s: Handle) -> Result<Handle, GpuError> {
        let mut graph = std::ptr::null_mut();
        // SAFETY: s is capturing.
        self.check("cuStreamEndCapture", unsafe {
            (self.f.cuStreamEndCapture)(s, &mut graph)
        })?;
        let mut exec = std::ptr::null_mut();
        // SAFETY: graph is the captured graph.
        let r = unsafe { (self.f.cuGraphInstantiateWithFlags)(&mut exec, graph, 0) };
        // SAFETY: the executable graph does not need the template.
        unsafe { (self.f.cuGraphDestroy)(graph) };
        self.check("cuGraphInstantiateWithFlags", r)?;
        Ok(exec)
    }

    pub fn launch_graph(&self, exec: Handle, s: Handle) -> Result<(), GpuError> {
        // SAFETY: exec is an instantiated graph, s a live stream.
        self.check("cuGraphLaunch", unsafe { (self.f.cuGraphLaunch)(exec, s) })
    }

    pub fn destroy_graph(&self, exec: Handle) {
        // SAFETY: exec is an instantiated graph; teardown errors are ignored.
        unsafe { (self.f.cuGraphExecDestroy)(exec) };
    }
}
