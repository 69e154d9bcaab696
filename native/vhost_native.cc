// elastic-vhost native addon: the few system calls JavaScript cannot make by itself.
// Interface: src/native.ts (NativeAddon). Built with node-addon-api, C++ exceptions enabled
// (NAPI_CPP_EXCEPTIONS): every failure is thrown as a JavaScript Error, never an abort.
//
// Conventions
//  - system errors: Error with message "<call> failed: <ENAME> (<strerror>)", code = errno name,
//    errno = -errno (like Node's own system errors), syscall = call name.
//  - bad argument types: TypeError (code ERR_INVALID_ARG_TYPE); bad ranges: RangeError
//    (code ERR_OUT_OF_RANGE).
//  - hot paths (read, write, eventfdRead, eventfdWrite) never allocate on the JS heap: they return
//    small integers (Smis).
#include <napi.h>
#include <uv.h>

#include <fcntl.h>
#include <signal.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstdint>
#include <atomic>
#include <cstring>
#include <mutex>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

namespace {

// Node 20 (V8 11.x) aborts when an external ArrayBuffer is larger than this.
constexpr uint64_t kMaxWindow = uint64_t{4} << 30;
// Largest integer a JS number holds exactly.
constexpr double kMaxSafeInteger = 9007199254740991.0;
// Linux SCM_MAX_FD: the most descriptors one SCM_RIGHTS message may carry.
constexpr size_t kMaxFds = 253;

// ---------------------------------------------------------------------------------------------
// Errors

const char* ErrnoName(int err) {
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 32))
  const char* name = strerrorname_np(err);
  if (name != nullptr) return name;
#endif
  return uv_err_name(-err);
}

[[noreturn]] void ThrowErrno(Napi::Env env, const char* call, int err) {
  std::string msg = std::string(call) + " failed: " + ErrnoName(err) + " (" + strerror(err) + ")";
  Napi::Error e = Napi::Error::New(env, msg);
  Napi::Object o = e.Value();
  o.Set("code", Napi::String::New(env, ErrnoName(err)));
  o.Set("errno", Napi::Number::New(env, -err));
  o.Set("syscall", Napi::String::New(env, call));
  throw e;
}

// libuv errors are negated errno values on Unix.
[[noreturn]] void ThrowUv(Napi::Env env, const char* call, int uverr) {
  ThrowErrno(env, call, -uverr);
}

[[noreturn]] void ThrowType(Napi::Env env, const std::string& msg) {
  Napi::TypeError e = Napi::TypeError::New(env, msg);
  e.Value().Set("code", Napi::String::New(env, "ERR_INVALID_ARG_TYPE"));
  throw e;
}

[[noreturn]] void ThrowRange(Napi::Env env, const std::string& msg) {
  Napi::RangeError e = Napi::RangeError::New(env, msg);
  e.Value().Set("code", Napi::String::New(env, "ERR_OUT_OF_RANGE"));
  throw e;
}

// ---------------------------------------------------------------------------------------------
// Argument helpers

double GetInteger(const Napi::CallbackInfo& info, size_t i, const char* fn, const char* what,
                  double min, double max) {
  Napi::Value v = info[i];
  if (!v.IsNumber()) ThrowType(info.Env(), std::string(fn) + ": " + what + " must be a number");
  double d = v.As<Napi::Number>().DoubleValue();
  if (!(d >= min && d <= max) || std::floor(d) != d) {
    ThrowRange(info.Env(), std::string(fn) + ": " + what + " must be an integer in [" +
                               std::to_string(static_cast<int64_t>(min)) + ", " +
                               std::to_string(static_cast<int64_t>(max)) + "]");
  }
  return d;
}

int GetFd(const Napi::CallbackInfo& info, size_t i, const char* fn) {
  return static_cast<int>(GetInteger(info, i, fn, "fd", 0, INT_MAX));
}

std::string GetString(const Napi::CallbackInfo& info, size_t i, const char* fn, const char* what) {
  Napi::Value v = info[i];
  if (!v.IsString()) ThrowType(info.Env(), std::string(fn) + ": " + what + " must be a string");
  std::string s = v.As<Napi::String>().Utf8Value();
  if (s.find('\0') != std::string::npos) {
    ThrowType(info.Env(), std::string(fn) + ": " + what + " must not contain NUL characters");
  }
  return s;
}

// (buf: Uint8Array, offset, length) starting at argument i -> pointer to the byte range.
uint8_t* GetBytes(const Napi::CallbackInfo& info, size_t i, const char* fn, size_t* len_out) {
  napi_env env = info.Env();
  napi_value v = info[i];
  napi_typedarray_type type;
  size_t length = 0;
  void* data = nullptr;
  if (napi_get_typedarray_info(env, v, &type, &length, &data, nullptr, nullptr) != napi_ok ||
      type != napi_uint8_array) {
    // napi_get_typedarray_info may leave nothing pending; make sure no stale exception remains.
    bool pending = false;
    napi_is_exception_pending(env, &pending);
    if (pending) {
      napi_value ignored;
      napi_get_and_clear_last_exception(env, &ignored);
    }
    ThrowType(info.Env(), std::string(fn) + ": buf must be a Uint8Array");
  }
  double off = GetInteger(info, i + 1, fn, "offset", 0, kMaxSafeInteger);
  double n = GetInteger(info, i + 2, fn, "length", 0, kMaxSafeInteger);
  if (off + n > static_cast<double>(length)) {
    ThrowRange(info.Env(), std::string(fn) + ": offset + length exceeds the buffer (" +
                               std::to_string(length) + " bytes)");
  }
  *len_out = static_cast<size_t>(n);
  return static_cast<uint8_t*>(data) + static_cast<size_t>(off);
}

// ---------------------------------------------------------------------------------------------
// Per-environment state (main thread and each worker get their own)

struct PollState;
class PollerWrap;

struct AddonData {
  Napi::FunctionReference poller_ctor;
  std::unordered_set<PollState*> live_polls;
  std::unordered_map<int, PollState*> started_by_fd;  // started pollers, one per fd
  uv_loop_t* loop = nullptr;
  bool tearing_down = false;
  // copy areas (see "areas and the copy list" below)
  struct Area {
    uint8_t* base = nullptr;
    uint64_t len = 0;
    Napi::Reference<Napi::Value> keep;  // the ArrayBuffer stays alive while registered
  };
  std::vector<Area> areas;  // index = area id; id 0 is never valid
  uint32_t next_area = 1;
  uint32_t live_areas = 0;
  uint32_t* copy_list = nullptr;
  size_t copy_list_len = 0;  // in uint32 words
  Napi::Reference<Napi::Value> copy_list_keep;
  // the busy-poll spinner (see "idle" below)
  struct Idle* idle = nullptr;
  // clockRead()'s cell: [seconds, microseconds] of CLOCK_REALTIME
  uint32_t clock_word[2] = {0, 0};
};

AddonData* Data(const Napi::CallbackInfo& info);
void InvalidateAreas(AddonData* d, const uint8_t* addr, size_t len);

// ---------------------------------------------------------------------------------------------
// mmap / munmap

// Every mapping sits between two PROT_NONE guard pages: a read or write one byte before or after a
// guest window faults at once (a bug found, in tests) instead of touching whatever lies next to it.
struct Mapping {
  void* addr;     // the file's bytes
  size_t len;
  void* base;     // the reservation: guard page, the pages of addr, guard page
  size_t total;
  bool unmapped;
  int slot;       // its entry in the fault table (-1: none free)
};

// Live mappings by address, shared by all environments of the process (mappings are process-wide).
std::mutex g_map_mutex;
std::unordered_map<void*, Mapping*> g_mappings;

// ---------------------------------------------------------------------------------------------
// SIGBUS containment. A front-end that truncates a memory file we cannot seal (hugetlbfs, plain
// files, memfds without MFD_ALLOW_SEALING) makes the next access to the missing pages raise
// SIGBUS — in the copy runner or in JavaScript (V8's own code reading a typed array over the
// window). The handler, installed once for the process, looks the address up in a fixed table of
// mapped ranges (read without locks: a signal handler may take none); inside one it maps private
// zero pages over the faulting page so the access completes, counts the fault on that mapping and
// returns. TypeScript polls the process-wide count (a word it reads without a call) and resets the
// connection whose window faulted. Any other SIGBUS gets the previous disposition (the default:
// the process dies with a core), so real crashes are not hidden.

constexpr int kFaultSlots = 1 << 16;  // > the 4 TiB default total cap in 2 GiB windows, plus tests
struct FaultSlot {
  std::atomic<uintptr_t> start{0};  // 0: free
  std::atomic<uintptr_t> end{0};
  std::atomic<uintptr_t> page{0};   // the mapping's page size (a hugetlbfs file's is larger)
  std::atomic<uint32_t> faults{0};
};
FaultSlot g_fault_slots[kFaultSlots];
std::atomic<int> g_fault_high{0};  // slots [0, high) may be in use
// The count of contained faults, readable from JavaScript as a Uint32Array over this word.
alignas(64) uint32_t g_fault_word[16];
struct sigaction g_old_sigbus;

// under g_map_mutex
int AddFaultSlot(void* addr, size_t len, size_t page) {
  int high = g_fault_high.load(std::memory_order_relaxed);
  for (int i = 0; i < kFaultSlots; i++) {
    FaultSlot& s = g_fault_slots[i];
    if (s.start.load(std::memory_order_relaxed) != 0) continue;
    uintptr_t a = reinterpret_cast<uintptr_t>(addr);
    s.faults.store(0, std::memory_order_relaxed);
    s.page.store(page, std::memory_order_relaxed);
    s.end.store(a + (len + page - 1) / page * page, std::memory_order_relaxed);
    s.start.store(a, std::memory_order_release);
    if (i >= high) g_fault_high.store(i + 1, std::memory_order_release);
    return i;
  }
  return -1;  // table full: the mapping works, a fault in it is not contained
}

// under g_map_mutex, before the range is unmapped
void RemoveFaultSlot(int slot) {
  if (slot < 0) return;
  g_fault_slots[slot].start.store(0, std::memory_order_release);
  g_fault_slots[slot].end.store(0, std::memory_order_relaxed);
}

void OnSigbus(int sig, siginfo_t* si, void* ctx) {
  // si_code <= 0: sent by kill()/tgkill(), not a fault; si_addr means nothing then
  if (si != nullptr && si->si_code > 0) {
    uintptr_t a = reinterpret_cast<uintptr_t>(si->si_addr);
    int high = g_fault_high.load(std::memory_order_acquire);
    for (int i = 0; i < high; i++) {
      FaultSlot& s = g_fault_slots[i];
      uintptr_t start = s.start.load(std::memory_order_acquire);
      if (start == 0 || a < start || a >= s.end.load(std::memory_order_relaxed)) continue;
      uintptr_t page = s.page.load(std::memory_order_relaxed);
      uintptr_t at = start + (a - start) / page * page;
      void* r = ::mmap(reinterpret_cast<void*>(at), page, PROT_READ | PROT_WRITE,
                       MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (r == MAP_FAILED) break;  // cannot contain it: die as without the handler
      s.faults.fetch_add(1, std::memory_order_relaxed);
      __atomic_fetch_add(&g_fault_word[0], 1, __ATOMIC_RELEASE);
      return;  // the faulting access runs again, on the zero page
    }
  }
  // Not ours: the disposition before us (normally the default: terminate with a core dump).
  if ((g_old_sigbus.sa_flags & SA_SIGINFO) != 0 && g_old_sigbus.sa_sigaction != nullptr) {
    g_old_sigbus.sa_sigaction(sig, si, ctx);
    return;
  }
  if (g_old_sigbus.sa_handler != SIG_DFL && g_old_sigbus.sa_handler != SIG_IGN) {
    g_old_sigbus.sa_handler(sig);
    return;
  }
  struct sigaction dfl;
  std::memset(&dfl, 0, sizeof dfl);
  dfl.sa_handler = SIG_DFL;
  ::sigaction(SIGBUS, &dfl, nullptr);
  // a fault recurs when the instruction runs again; a sent signal must be sent again
  if (si == nullptr || si->si_code <= 0) ::raise(SIGBUS);
}

std::once_flag g_sigbus_once;
void InstallSigbusHandler() {
  std::call_once(g_sigbus_once, [] {
    struct sigaction sa;
    std::memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = OnSigbus;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    ::sigaction(SIGBUS, &sa, &g_old_sigbus);
  });
}

// guestFaultWord() -> Uint32Array(1): [0] counts every contained fault of the process
Napi::Value GuestFaultWord(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::ArrayBuffer ab = Napi::ArrayBuffer::New(env, g_fault_word, sizeof g_fault_word, [](Napi::Env, void*) {});
  return Napi::Uint32Array::New(env, 1, ab, 0);
}

// mappingFaults(buf) -> faults contained in this mmap() ArrayBuffer (0 when unknown or unmapped)
Napi::Value MappingFaults(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsArrayBuffer()) ThrowType(env, "mappingFaults: buf must be an ArrayBuffer returned by mmap()");
  Napi::ArrayBuffer ab = info[0].As<Napi::ArrayBuffer>();
  uint32_t n = 0;
  if (!ab.IsDetached()) {
    std::lock_guard<std::mutex> lock(g_map_mutex);
    auto it = g_mappings.find(ab.Data());
    if (it != g_mappings.end() && it->second->slot >= 0) n = g_fault_slots[it->second->slot].faults.load();
  }
  return Napi::Number::New(env, n);
}

void FinalizeMapping(napi_env /*env*/, void* /*data*/, void* hint) {
  Mapping* m = static_cast<Mapping*>(hint);
  {
    std::lock_guard<std::mutex> lock(g_map_mutex);
    auto it = g_mappings.find(m->addr);
    if (it != g_mappings.end() && it->second == m) g_mappings.erase(it);
    if (!m->unmapped) {
      RemoveFaultSlot(m->slot);
      ::munmap(m->base, m->total);
      m->unmapped = true;
    }
  }
  delete m;
}

Napi::Value Mmap(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = GetFd(info, 0, "mmap");
  double len = GetInteger(info, 1, "mmap", "length", 1, static_cast<double>(kMaxWindow));
  double off = GetInteger(info, 2, "mmap", "offset", 0, kMaxSafeInteger);
  size_t n = static_cast<size_t>(len);
  // Guards as large as the file's pages: a hugetlbfs file (QEMU's memory-backend-file on
  // /dev/hugepages, DPDK's hugepage memory) maps only at addresses aligned to its page size.
  size_t align = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  struct stat fst;
  if (::fstat(fd, &fst) == 0 && fst.st_blksize > 0) {
    size_t b = static_cast<size_t>(fst.st_blksize);
    if ((b & (b - 1)) == 0 && b > align && b <= (size_t{1} << 30)) align = b;
  }
  const size_t body = (n + align - 1) / align * align;
  const size_t total = body + 3 * align;  // one align of slack to place the body on a boundary
  void* base = ::mmap(nullptr, total, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  void* addr = MAP_FAILED;
  if (base != MAP_FAILED) {
    uintptr_t at = (reinterpret_cast<uintptr_t>(base) + align + align - 1) / align * align;
    addr = ::mmap(reinterpret_cast<void*>(at), n, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, static_cast<off_t>(off));
    if (addr == MAP_FAILED) ::munmap(base, total);
  }
  size_t mapped_total = total;
  if (addr == MAP_FAILED) {
    // no room for guards (or a file that refuses a fixed address): map it plainly, as before
    addr = ::mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_SHARED, fd, static_cast<off_t>(off));
    if (addr == MAP_FAILED) ThrowErrno(env, "mmap", errno);
    base = addr;
    mapped_total = n;
  }
  Mapping* m = new Mapping{addr, n, base, mapped_total, false, -1};
  {
    std::lock_guard<std::mutex> lock(g_map_mutex);
    m->slot = AddFaultSlot(addr, n, align);
    g_mappings[addr] = m;
  }
  napi_value result;
  napi_status st = napi_create_external_arraybuffer(env, addr, n, FinalizeMapping, m, &result);
  if (st != napi_ok) {
    FinalizeMapping(env, addr, m);
    bool pending = false;
    napi_is_exception_pending(env, &pending);
    if (pending) throw Napi::Error::New(env);  // takes the pending exception
    Napi::Error e = Napi::Error::New(env, "mmap: cannot create an external ArrayBuffer");
    e.Value().Set("code", Napi::String::New(env, "ERR_NAPI"));
    throw e;
  }
  return Napi::Value(env, result);
}

void Munmap(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsArrayBuffer()) ThrowType(env, "munmap: buf must be an ArrayBuffer returned by mmap()");
  Napi::ArrayBuffer ab = info[0].As<Napi::ArrayBuffer>();
  if (ab.IsDetached()) return;  // already unmapped (double munmap is a no-op)
  void* addr = ab.Data();
  size_t len = ab.ByteLength();
  {
    std::lock_guard<std::mutex> lock(g_map_mutex);
    auto it = g_mappings.find(addr);
    if (it == g_mappings.end() || it->second->len != len || it->second->unmapped) {
      ThrowType(env, "munmap: buf is not an ArrayBuffer returned by mmap()");
    }
    Mapping* m = it->second;
    RemoveFaultSlot(m->slot);
    if (::munmap(m->base, m->total) != 0) {
      int err = errno;
      m->slot = AddFaultSlot(m->addr, m->len, m->slot >= 0 ? g_fault_slots[m->slot].page.load() : 4096);
      ThrowErrno(env, "munmap", err);
    }
    m->unmapped = true;  // the finalizer (which still runs later) now only frees m
    g_mappings.erase(it);
  }
  // A copy area inside the unmapped range must never be copied into or out of again.
  InvalidateAreas(Data(info), static_cast<uint8_t*>(addr), len);
  ab.Detach();
}

// ---------------------------------------------------------------------------------------------
// eventfd

Napi::Value EventFd(const Napi::CallbackInfo& info) {
  double init = info[0].IsUndefined() ? 0 : GetInteger(info, 0, "eventfd", "initval", 0, UINT32_MAX);
  // eventfd(init, true): a blocking one, as some front-ends hand over (tests of our non-blocking writes)
  bool blocking = info.Length() > 1 && info[1].IsBoolean() && info[1].As<Napi::Boolean>().Value();
  int fd = ::eventfd(static_cast<unsigned int>(init), (blocking ? 0 : EFD_NONBLOCK) | EFD_CLOEXEC);
  if (fd < 0) ThrowErrno(info.Env(), "eventfd", errno);
  return Napi::Number::New(info.Env(), fd);
}

Napi::Value EventFdRead(const Napi::CallbackInfo& info) {
  int fd = GetFd(info, 0, "eventfdRead");
  uint64_t v = 0;
  for (;;) {
    ssize_t r = ::read(fd, &v, sizeof v);
    if (r == sizeof v) break;
    if (r < 0 && errno == EINTR) continue;
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return Napi::Number::New(info.Env(), 0);
    ThrowErrno(info.Env(), "eventfdRead", r < 0 ? errno : EIO);
  }
  return Napi::Number::New(info.Env(), static_cast<double>(v));
}

void EventFdWrite(const Napi::CallbackInfo& info) {
  int fd = GetFd(info, 0, "eventfdWrite");
  uint64_t v = 1;
  if (!info[1].IsUndefined()) {
    v = static_cast<uint64_t>(GetInteger(info, 1, "eventfdWrite", "value", 0, kMaxSafeInteger));
  }
  for (;;) {
    ssize_t r = ::write(fd, &v, sizeof v);
    if (r == sizeof v) return;
    if (r < 0 && errno == EINTR) continue;
    ThrowErrno(info.Env(), "eventfdWrite", r < 0 ? errno : EIO);
  }
}

// setNonBlocking(fd): O_NONBLOCK on the open file (a front-end's call/err eventfd: a counter it
// filled to the maximum must make our write fail with EAGAIN, not block the event loop)
void SetNonBlocking(const Napi::CallbackInfo& info) {
  int fd = GetFd(info, 0, "setNonBlocking");
  int fl = ::fcntl(fd, F_GETFL);
  if (fl < 0 || ::fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) ThrowErrno(info.Env(), "fcntl O_NONBLOCK", errno);
}

// ---------------------------------------------------------------------------------------------
// memfd

Napi::Value MemfdCreate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string name = GetString(info, 0, "memfdCreate", "name");
  double size = GetInteger(info, 1, "memfdCreate", "size", 0, kMaxSafeInteger);
  bool sealable = info.Length() > 2 && info[2].IsBoolean() && info[2].As<Napi::Boolean>().Value();
  // hugetlb: backed by the default huge page size (2 MiB here), as QEMU's and DPDK's hugepage memory
  bool hugetlb = info.Length() > 3 && info[3].IsBoolean() && info[3].As<Napi::Boolean>().Value();
  int fd = ::memfd_create(name.c_str(), MFD_CLOEXEC | (sealable ? MFD_ALLOW_SEALING : 0) | (hugetlb ? MFD_HUGETLB : 0));
  if (fd < 0) ThrowErrno(env, "memfd_create", errno);
  if (::ftruncate(fd, static_cast<off_t>(size)) != 0) {
    int err = errno;
    ::close(fd);
    ThrowErrno(env, "ftruncate", err);
  }
  return Napi::Number::New(env, fd);
}

// Seals (memfd): a guest memory file that cannot shrink cannot make our mapping of it SIGBUS.
// sealShrink(fd) -> 1 when F_SEAL_SHRINK is now in place (added, or there already), 0 when the file
// cannot be sealed (not a memfd, or created without MFD_ALLOW_SEALING and not sealed)
Napi::Value SealShrink(const Napi::CallbackInfo& info) {
  int fd = GetFd(info, 0, "sealShrink");
  int ok = 0;
  if (::fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK) == 0) {
    ok = 1;
  } else {
    int seals = ::fcntl(fd, F_GET_SEALS);
    ok = (seals >= 0 && (seals & F_SEAL_SHRINK) != 0) ? 1 : 0;
  }
  return Napi::Number::New(info.Env(), ok);
}

// ftruncate(fd, size): tests (a front-end shrinking its memory file)
void Ftruncate(const Napi::CallbackInfo& info) {
  int fd = GetFd(info, 0, "ftruncate");
  double size = GetInteger(info, 1, "ftruncate", "size", 0, kMaxSafeInteger);
  if (::ftruncate(fd, static_cast<off_t>(size)) != 0) ThrowErrno(info.Env(), "ftruncate", errno);
}

// ---------------------------------------------------------------------------------------------
// Unix sockets

void FillSockaddr(Napi::Env env, const char* fn, const std::string& path, sockaddr_un* sa) {
  if (path.empty()) ThrowRange(env, std::string(fn) + ": path must not be empty");
  if (path.size() >= sizeof(sa->sun_path)) {
    ThrowRange(env, std::string(fn) + ": path longer than " + std::to_string(sizeof(sa->sun_path) - 1) +
                        " bytes");
  }
  std::memset(sa, 0, sizeof *sa);
  sa->sun_family = AF_UNIX;
  std::memcpy(sa->sun_path, path.data(), path.size());
}

// A socket file nobody listens on (connect gives ECONNREFUSED) is left over from a dead process.
// Note: when someone does listen, this probe makes (and at once drops) one connection to it.
bool IsStaleSocket(const sockaddr_un& sa) {
  struct stat st;
  if (::lstat(sa.sun_path, &st) != 0 || !S_ISSOCK(st.st_mode)) return false;
  int probe = ::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (probe < 0) return false;
  int r = ::connect(probe, reinterpret_cast<const sockaddr*>(&sa), sizeof sa);
  int err = errno;
  ::close(probe);
  return r != 0 && err == ECONNREFUSED;
}

// unixListen(path, backlog, mode, uid = -1, gid = -1) -> listening fd (non-blocking, close-on-exec)
//
// The socket is made ready where no client can reach it, and only then put at its path. A chown or
// chmod by path once the socket is at its path would follow whatever a client that controls the
// directory (libvirt's QEMU with --socket-group and a group-writable directory) swapped in there,
// a symlink to any file, with root's rights. So:
//   1. a private directory (mkdtemp, mode 0700) next to the path, on the same filesystem so that
//      rename() works, opened with O_NOFOLLOW; fstat proves it is ours (a directory of this user,
//      no access for anyone else) even if the name was swapped between mkdtemp and open
//   2. bind() inside it through /proc/self/fd/<dirfd>/s: the directory the fd holds, whatever its
//      name points at by now (without /proc: its path, then checked that the socket is in it)
//   3. fchownat (AT_SYMLINK_NOFOLLOW) and fchmodat relative to that fd: nobody else can create,
//      remove or swap anything in the directory
//   4. listen(), then renameat() onto the path, never over a socket something still listens on nor
//      over anything that is not a socket: the path appears only once it accepts connections (a
//      client that sees the file never gets ECONNREFUSED), with its final owner and mode
//   5. the private directory removed
// uid/gid -1 leave that one unchanged (chown(2)).
Napi::Value UnixListen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = GetString(info, 0, "unixListen", "path");
  int backlog = static_cast<int>(GetInteger(info, 1, "unixListen", "backlog", 0, INT_MAX));
  mode_t mode = static_cast<mode_t>(GetInteger(info, 2, "unixListen", "mode", 0, 07777));
  double uidArg = info.Length() > 3 && !info[3].IsUndefined() ? GetInteger(info, 3, "unixListen", "uid", -1, UINT32_MAX - 1.0) : -1;
  double gidArg = info.Length() > 4 && !info[4].IsUndefined() ? GetInteger(info, 4, "unixListen", "gid", -1, UINT32_MAX - 1.0) : -1;
  uid_t uid = uidArg < 0 ? static_cast<uid_t>(-1) : static_cast<uid_t>(uidArg);
  gid_t gid = gidArg < 0 ? static_cast<gid_t>(-1) : static_cast<gid_t>(gidArg);
  sockaddr_un sa;
  FillSockaddr(env, "unixListen", path, &sa);  // the path clients connect to must fit sun_path

  size_t slash = path.rfind('/');
  std::string dir = slash == std::string::npos ? std::string(".") : slash == 0 ? std::string("/") : path.substr(0, slash);
  std::string leaf = slash == std::string::npos ? path : path.substr(slash + 1);
  if (leaf.empty() || leaf == "." || leaf == "..") ThrowRange(env, "unixListen: path must name a file: " + path);

  int parent = ::open(dir.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (parent < 0) ThrowErrno(env, "open (socket directory)", errno);
  std::string tmpl = dir + (dir == "/" ? "" : "/") + ".evl" + std::to_string(::getpid()) + ".XXXXXX";
  std::vector<char> tmpPath(tmpl.begin(), tmpl.end());
  tmpPath.push_back('\0');
  if (::mkdtemp(tmpPath.data()) == nullptr) {
    int err = errno;
    ::close(parent);
    ThrowErrno(env, "mkdtemp", err);
  }
  const std::string made(tmpPath.data());
  const std::string tmpName = made.substr(made.rfind('/') + 1);
  int priv = ::openat(parent, tmpName.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  int fd = -1;
  const char* failed = nullptr;
  int err = 0;
  bool bound = false;
  struct stat st;
  if (priv < 0) {
    failed = "open (private directory)";
    err = errno;
  } else if (::fstat(priv, &st) != 0) {
    failed = "fstat (private directory)";
    err = errno;
  } else if (!S_ISDIR(st.st_mode) || st.st_uid != ::geteuid() || (st.st_mode & 077) != 0) {
    failed = "mkdtemp (the private directory was replaced)";
    err = EEXIST;
  } else if ((fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)) < 0) {
    failed = "socket";
    err = errno;
  } else {
    sockaddr_un in;
    std::memset(&in, 0, sizeof in);
    in.sun_family = AF_UNIX;
    std::snprintf(in.sun_path, sizeof in.sun_path, "/proc/self/fd/%d/s", priv);
    int r = ::bind(fd, reinterpret_cast<const sockaddr*>(&in), sizeof in);
    if (r != 0 && (errno == ENOENT || errno == ENOTDIR)) {
      // no /proc: bind by the private directory's path, then make sure the socket is in it
      std::string viaPath = std::string(tmpPath.data()) + "/s";
      if (viaPath.size() >= sizeof in.sun_path) {
        errno = ENAMETOOLONG;
      } else {
        std::memset(in.sun_path, 0, sizeof in.sun_path);
        std::memcpy(in.sun_path, viaPath.data(), viaPath.size());
        r = ::bind(fd, reinterpret_cast<const sockaddr*>(&in), sizeof in);
        struct stat sst;
        if (r == 0 && (::fstatat(priv, "s", &sst, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISSOCK(sst.st_mode))) {
          r = -1;
          errno = EEXIST;
        }
      }
    }
    if (r != 0) {
      failed = "bind";
      err = errno;
    } else {
      bound = true;
    }
  }
  if (failed == nullptr) {
    // in the private directory: only this process reaches the socket, its owner and mode are final
    // before anyone can connect
    if ((uid != static_cast<uid_t>(-1) || gid != static_cast<gid_t>(-1)) && ::fchownat(priv, "s", uid, gid, AT_SYMLINK_NOFOLLOW) != 0) {
      failed = "fchownat";
    } else if (::fchmodat(priv, "s", mode, 0) != 0) {
      failed = "fchmodat";
    } else if (::listen(fd, backlog) != 0) {
      failed = "listen";
    } else {
      struct stat at;
      if (::fstatat(parent, leaf.c_str(), &at, AT_SYMLINK_NOFOLLOW) == 0 && (!S_ISSOCK(at.st_mode) || !IsStaleSocket(sa))) {
        failed = "bind";
        err = EADDRINUSE;
      } else if (::renameat(priv, "s", parent, leaf.c_str()) != 0) {
        failed = "rename";
      } else {
        bound = false;  // it is at its path now
      }
    }
    if (failed != nullptr && err == 0) err = errno;
  }
  if (bound) ::unlinkat(priv, "s", 0);
  if (priv >= 0) ::close(priv);
  ::unlinkat(parent, tmpName.c_str(), AT_REMOVEDIR);
  ::close(parent);
  if (failed != nullptr) {
    if (fd >= 0) ::close(fd);
    ThrowErrno(env, failed, err);
  }
  return Napi::Number::New(env, fd);
}

// openAt(dirfd, name, flags, mode) -> fd: openat(2) of one path component (no '/': a caller walks
// a path one directory at a time with O_NOFOLLOW, so that no symlink anywhere is followed), flags
// as fs.constants has them, O_CLOEXEC always added. Captures create their files with it relative to
// the capture directory's fd (src/ops/capture.ts).
Napi::Value OpenAt(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int dirfd = GetFd(info, 0, "openAt");
  std::string name = GetString(info, 1, "openAt", "name");
  int flags = static_cast<int>(GetInteger(info, 2, "openAt", "flags", 0, INT_MAX));
  mode_t mode = static_cast<mode_t>(GetInteger(info, 3, "openAt", "mode", 0, 07777));
  if (name.empty() || name.find('/') != std::string::npos || name.find('\0') != std::string::npos) {
    ThrowRange(env, "openAt: name must be one path component, without '/'");
  }
  int fd;
  do {
    fd = ::openat(dirfd, name.c_str(), flags | O_CLOEXEC, mode);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) ThrowErrno(env, "openat", errno);
  return Napi::Number::New(env, fd);
}

Napi::Value UnixAccept(const Napi::CallbackInfo& info) {
  int fd = GetFd(info, 0, "unixAccept");
  for (;;) {
    int c = ::accept4(fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (c >= 0) return Napi::Number::New(info.Env(), c);
    if (errno == EINTR) continue;
    // ECONNABORTED: the client gave up before we accepted; nothing to hand out.
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ECONNABORTED) {
      return Napi::Number::New(info.Env(), -1);
    }
    ThrowErrno(info.Env(), "accept4", errno);
  }
}

Napi::Value UnixConnect(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = GetString(info, 0, "unixConnect", "path");
  sockaddr_un sa;
  FillSockaddr(env, "unixConnect", path, &sa);
  // Non-blocking connect: on a unix stream socket it completes at once, or fails with EAGAIN
  // when the listener's backlog is full (thrown, so the caller may retry). It never blocks the
  // event loop, even when the listener lives in this same process.
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) ThrowErrno(env, "socket", errno);
  int r;
  do {
    r = ::connect(fd, reinterpret_cast<const sockaddr*>(&sa), sizeof sa);
  } while (r != 0 && errno == EINTR);
  if (r != 0) {
    int err = errno;
    ::close(fd);
    ThrowErrno(env, "connect", err);
  }
  return Napi::Number::New(env, fd);
}

Napi::Value SocketPair(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) != 0) {
    ThrowErrno(env, "socketpair", errno);
  }
  Napi::Array a = Napi::Array::New(env, 2);
  a.Set(uint32_t{0}, Napi::Number::New(env, sv[0]));
  a.Set(uint32_t{1}, Napi::Number::New(env, sv[1]));
  return a;
}

union CmsgBuf {
  char buf[CMSG_SPACE(kMaxFds * sizeof(int))];
  cmsghdr align;
};

Napi::Value RecvMsg(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = GetFd(info, 0, "recvmsg");
  size_t len;
  uint8_t* p = GetBytes(info, 1, "recvmsg", &len);
  size_t max_fds = static_cast<size_t>(GetInteger(info, 4, "recvmsg", "maxFds", 0, kMaxFds));

  CmsgBuf cbuf;
  iovec iov{p, len};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  if (max_fds > 0) {
    msg.msg_control = cbuf.buf;
    // CMSG_LEN, not CMSG_SPACE: the kernel fits (controllen - header) / sizeof(int) fds, and
    // CMSG_SPACE's padding would make room for one more than asked for.
    msg.msg_controllen = CMSG_LEN(max_fds * sizeof(int));
  }
  ssize_t n;
  do {
    n = ::recvmsg(fd, &msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
  } while (n < 0 && errno == EINTR);

  Napi::Object result = Napi::Object::New(env);
  Napi::Array fds = Napi::Array::New(env);
  if (n < 0) {
    if (errno != EAGAIN && errno != EWOULDBLOCK) ThrowErrno(env, "recvmsg", errno);
    result.Set("bytes", Napi::Number::New(env, -1));
    result.Set("fds", fds);
    result.Set("ctrunc", Napi::Boolean::New(env, false));
    return result;
  }
  uint32_t count = 0;
  if (msg.msg_controllen > 0) {
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
      size_t nfds = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      const unsigned char* d = CMSG_DATA(c);
      for (size_t k = 0; k < nfds; k++) {
        int v;
        std::memcpy(&v, d + k * sizeof(int), sizeof v);
        fds.Set(count++, Napi::Number::New(env, v));
      }
    }
  }
  // On MSG_CTRUNC the descriptors that did fit are in fds (the caller owns and must close them);
  // the kernel has already dropped the rest.
  result.Set("bytes", Napi::Number::New(env, static_cast<double>(n)));
  result.Set("fds", fds);
  result.Set("ctrunc", Napi::Boolean::New(env, (msg.msg_flags & MSG_CTRUNC) != 0));
  return result;
}

Napi::Value SendMsg(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = GetFd(info, 0, "sendmsg");
  size_t len;
  uint8_t* p = GetBytes(info, 1, "sendmsg", &len);
  Napi::Value fv = info[4];
  int fdv[kMaxFds];
  size_t nfds = 0;
  if (!fv.IsUndefined()) {
    if (!fv.IsArray()) ThrowType(env, "sendmsg: fds must be an array of file descriptors");
    Napi::Array arr = fv.As<Napi::Array>();
    nfds = arr.Length();
    if (nfds > kMaxFds) ThrowRange(env, "sendmsg: at most 253 fds per message");
    for (size_t k = 0; k < nfds; k++) {
      Napi::Value e = arr.Get(static_cast<uint32_t>(k));
      if (!e.IsNumber()) ThrowType(env, "sendmsg: fds must be an array of file descriptors");
      double d = e.As<Napi::Number>().DoubleValue();
      if (!(d >= 0 && d <= INT_MAX) || std::floor(d) != d) {
        ThrowRange(env, "sendmsg: every fd must be a non-negative integer");
      }
      fdv[k] = static_cast<int>(d);
    }
  }
  CmsgBuf cbuf;
  iovec iov{p, len};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  if (nfds > 0) {
    std::memset(cbuf.buf, 0, sizeof cbuf.buf);
    msg.msg_control = cbuf.buf;
    msg.msg_controllen = CMSG_SPACE(nfds * sizeof(int));
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(nfds * sizeof(int));
    std::memcpy(CMSG_DATA(c), fdv, nfds * sizeof(int));
  }
  ssize_t n;
  do {
    n = ::sendmsg(fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return Napi::Number::New(env, -1);
    ThrowErrno(env, "sendmsg", errno);
  }
  return Napi::Number::New(env, static_cast<double>(n));
}

// ---------------------------------------------------------------------------------------------
// copy: the data path's memmove. Node 20 has no range copy between two typed arrays that does not
// create a view object per call (TypedArray.set(subarray()), Buffer.copy), and a JavaScript loop
// runs far below memcpy speed for large frames.

uint8_t* TypedBytes(const Napi::CallbackInfo& info, size_t i, const char* what, size_t* length) {
  napi_typedarray_type type;
  void* data = nullptr;
  if (napi_get_typedarray_info(info.Env(), info[i], &type, length, &data, nullptr, nullptr) != napi_ok ||
      type != napi_uint8_array) {
    bool pending = false;
    napi_is_exception_pending(info.Env(), &pending);
    if (pending) {
      napi_value ignored;
      napi_get_and_clear_last_exception(info.Env(), &ignored);
    }
    ThrowType(info.Env(), std::string("copy: ") + what + " must be a Uint8Array");
  }
  return static_cast<uint8_t*>(data);
}

Napi::Value Copy(const Napi::CallbackInfo& info) {
  size_t dlen = 0, slen = 0;
  uint8_t* d = TypedBytes(info, 0, "dst", &dlen);
  double doff = GetInteger(info, 1, "copy", "dstOff", 0, kMaxSafeInteger);
  uint8_t* s = TypedBytes(info, 2, "src", &slen);
  double soff = GetInteger(info, 3, "copy", "srcOff", 0, kMaxSafeInteger);
  double n = GetInteger(info, 4, "copy", "len", 0, kMaxSafeInteger);
  if (doff + n > static_cast<double>(dlen) || soff + n > static_cast<double>(slen)) {
    ThrowRange(info.Env(), "copy: range exceeds dst (" + std::to_string(dlen) + " bytes) or src (" +
                               std::to_string(slen) + " bytes)");
  }
  if (n > 0) std::memmove(d + static_cast<size_t>(doff), s + static_cast<size_t>(soff), static_cast<size_t>(n));
  return info.Env().Undefined();
}


// ---------------------------------------------------------------------------------------------
// Areas and the copy list. TypeScript registers each piece of memory the data path copies between
// (guest memory windows, the local data store, scratch buffers) once, and gets a small integer id.
// Per batch it records copies as five uint32 words each — source area, source offset, destination
// area, destination offset, length — in one preallocated Uint32Array (setCopyList) and runs them
// with one call: runCopies(n). Every range was bounds-checked in TypeScript before it was recorded;
// here it is checked again against the registered area and a bad entry is refused (skipped and
// counted), never executed. Copies run in list order, so a later copy sees the bytes of earlier ones.

AddonData* Data(const Napi::CallbackInfo& info) { return info.Env().GetInstanceData<AddonData>(); }

// clockWord() -> Uint32Array(2) over this environment's clock cell; clockRead() fills it with
// CLOCK_REALTIME as [seconds, microseconds] and returns nothing: a time returned to JavaScript is
// a heap double per call, and packet capture stamps every record on the data path.
Napi::Value ClockWord(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  AddonData* d = Data(info);
  Napi::ArrayBuffer ab = Napi::ArrayBuffer::New(env, d->clock_word, sizeof d->clock_word, [](Napi::Env, void*) {});
  return Napi::Uint32Array::New(env, 2, ab, 0);
}

void ClockRead(const Napi::CallbackInfo& info) {
  AddonData* d = Data(info);
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  d->clock_word[0] = static_cast<uint32_t>(ts.tv_sec);
  d->clock_word[1] = static_cast<uint32_t>(ts.tv_nsec / 1000);
}

void InvalidateAreas(AddonData* d, const uint8_t* addr, size_t len) {
  if (d == nullptr) return;
  for (size_t i = 1; i < d->areas.size(); i++) {
    AddonData::Area& a = d->areas[i];
    if (a.base == nullptr) continue;
    if (a.base < addr + len && addr < a.base + a.len) {
      a.base = nullptr;
      a.len = 0;
      a.keep.Reset();
      d->live_areas--;
    }
  }
}

// registerArea(view: ArrayBuffer | TypedArray) -> id (>= 1): the whole ArrayBuffer, or the view's bytes.
Napi::Value RegisterArea(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  AddonData* d = Data(info);
  uint8_t* base = nullptr;
  size_t len = 0;
  Napi::Value v = info[0];
  if (v.IsArrayBuffer()) {
    Napi::ArrayBuffer ab = v.As<Napi::ArrayBuffer>();
    base = static_cast<uint8_t*>(ab.Data());
    len = ab.ByteLength();
  } else if (v.IsTypedArray()) {
    // the view's own data pointer: also right for a view over a SharedArrayBuffer (the data
    // store the worker threads share), whose buffer napi_get_arraybuffer_info refuses
    napi_typedarray_type type;
    size_t elements = 0;
    void* data = nullptr;
    if (napi_get_typedarray_info(env, v, &type, &elements, &data, nullptr, nullptr) != napi_ok) {
      ThrowType(env, "registerArea: unreadable typed array");
    }
    base = static_cast<uint8_t*>(data);
    len = v.As<Napi::TypedArray>().ByteLength();
  } else {
    ThrowType(env, "registerArea: expected an ArrayBuffer or a typed array");
  }
  if (len == 0 || base == nullptr) ThrowRange(env, "registerArea: empty or detached buffer");
  if (len > kMaxWindow) ThrowRange(env, "registerArea: area larger than 4 GiB");
  constexpr uint32_t kMaxAreas = 1u << 20;
  if (d->live_areas + 1 >= kMaxAreas) ThrowRange(env, "registerArea: too many areas");
  if (d->areas.empty()) d->areas.resize(1);
  // Ids are handed out round-robin so that a just-freed id is not reused at once.
  uint32_t id = 0;
  for (uint32_t tries = 0; tries < kMaxAreas; tries++) {
    uint32_t c = d->next_area;
    d->next_area = c + 1 >= kMaxAreas ? 1 : c + 1;
    if (c >= d->areas.size()) {
      d->areas.resize(c + 1);
      id = c;
      break;
    }
    if (d->areas[c].base == nullptr) {
      id = c;
      break;
    }
  }
  if (id == 0) ThrowRange(env, "registerArea: too many areas");
  AddonData::Area& a = d->areas[id];
  a.base = base;
  a.len = len;
  a.keep = Napi::Reference<Napi::Value>::New(v, 1);
  d->live_areas++;
  return Napi::Number::New(env, id);
}

void UnregisterArea(const Napi::CallbackInfo& info) {
  AddonData* d = Data(info);
  double id = GetInteger(info, 0, "unregisterArea", "id", 0, UINT32_MAX);
  size_t i = static_cast<size_t>(id);
  if (i == 0 || i >= d->areas.size() || d->areas[i].base == nullptr) return;  // already gone
  AddonData::Area& a = d->areas[i];
  a.base = nullptr;
  a.len = 0;
  a.keep.Reset();
  d->live_areas--;
}

// areaLength(id) -> bytes, 0 when the id names no live area (tests, diagnostics)
Napi::Value AreaLength(const Napi::CallbackInfo& info) {
  AddonData* d = Data(info);
  double id = GetInteger(info, 0, "areaLength", "id", 0, UINT32_MAX);
  size_t i = static_cast<size_t>(id);
  double n = (i == 0 || i >= d->areas.size()) ? 0 : static_cast<double>(d->areas[i].len);
  return Napi::Number::New(info.Env(), n);
}

void SetCopyList(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  AddonData* d = Data(info);
  if (!info[0].IsTypedArray() || info[0].As<Napi::TypedArray>().TypedArrayType() != napi_uint32_array) {
    ThrowType(env, "setCopyList: expected a Uint32Array");
  }
  Napi::TypedArray ta = info[0].As<Napi::TypedArray>();
  Napi::ArrayBuffer ab = ta.ArrayBuffer();
  d->copy_list = reinterpret_cast<uint32_t*>(static_cast<uint8_t*>(ab.Data()) + ta.ByteOffset());
  d->copy_list_len = ta.ElementLength();
  d->copy_list_keep = Napi::Reference<Napi::Value>::New(info[0], 1);
}

// runCopies(n) -> number of entries refused (0 when all ran)
Napi::Value RunCopies(const Napi::CallbackInfo& info) {
  AddonData* d = Data(info);
  double nd = GetInteger(info, 0, "runCopies", "count", 0, kMaxSafeInteger);
  size_t n = static_cast<size_t>(nd);
  if (n * 5 > d->copy_list_len) ThrowRange(info.Env(), "runCopies: count beyond the copy list");
  const uint32_t* e = d->copy_list;
  const size_t na = d->areas.size();
  const AddonData::Area* areas = d->areas.data();
  uint32_t refused = 0;
  for (size_t k = 0; k < n; k++, e += 5) {
    uint32_t sa = e[0], so = e[1], da = e[2], dof = e[3], len = e[4];
    if (sa == 0 || sa >= na || da == 0 || da >= na) {
      refused++;
      continue;
    }
    const AddonData::Area& s = areas[sa];
    const AddonData::Area& t = areas[da];
    if (s.base == nullptr || t.base == nullptr || uint64_t{so} + len > s.len || uint64_t{dof} + len > t.len) {
      refused++;
      continue;
    }
    std::memmove(t.base + dof, s.base + so, len);
  }
  return Napi::Number::New(info.Env(), refused);
}


// ---------------------------------------------------------------------------------------------
// idle: one uv_idle_t per environment for adaptive polling. While it is started, libuv does not
// block in its poll phase and calls the callback once per loop turn, after the I/O callbacks —
// so polling rings yields to sockets, timers and kicks every turn. setImmediate would do the same
// but allocates a few hundred bytes per turn; this allocates nothing.

struct Idle {
  uv_idle_t handle;
  napi_env env;
  Napi::FunctionReference cb;
  bool started = false;
};

void OnIdle(uv_idle_t* h) {
  Idle* s = static_cast<Idle*>(h->data);
  if (s->cb.IsEmpty()) return;
  Napi::Env env(s->env);
  Napi::HandleScope scope(env);
  try {
    s->cb.MakeCallback(env.Global(), {});
  } catch (const Napi::Error& e) {
    napi_fatal_exception(env, e.Value());
  }
}

void OnIdleClosed(uv_handle_t* h) { delete static_cast<Idle*>(h->data); }

// setIdle(cb): the callback the spinner runs (replaces any earlier one)
void SetIdle(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  AddonData* d = Data(info);
  if (!info[0].IsFunction()) ThrowType(env, "setIdle: expected a function");
  if (d->idle == nullptr) {
    Idle* s = new Idle;
    s->env = env;
    s->handle.data = s;
    int r = uv_idle_init(d->loop, &s->handle);
    if (r < 0) {
      delete s;
      ThrowUv(env, "uv_idle_init", r);
    }
    // The spinner alone does not keep the process alive (an unref'd idle handle still stops libuv
    // from blocking while it is started).
    uv_unref(reinterpret_cast<uv_handle_t*>(&s->handle));
    d->idle = s;
  }
  d->idle->cb = Napi::Persistent(info[0].As<Napi::Function>());
}

// idleStart() / idleStop(): run the callback every loop turn, or not
void IdleStart(const Napi::CallbackInfo& info) {
  AddonData* d = Data(info);
  if (d->idle == nullptr) ThrowType(info.Env(), "idleStart: setIdle() first");
  if (d->idle->started) return;
  int r = uv_idle_start(&d->idle->handle, OnIdle);
  if (r < 0) ThrowUv(info.Env(), "uv_idle_start", r);
  d->idle->started = true;
}

void IdleStop(const Napi::CallbackInfo& info) {
  AddonData* d = Data(info);
  if (d->idle == nullptr || !d->idle->started) return;
  uv_idle_stop(&d->idle->handle);
  d->idle->started = false;
}

void CloseIdle(AddonData* d) {
  if (d->idle == nullptr) return;
  Idle* s = d->idle;
  d->idle = nullptr;
  uv_idle_stop(&s->handle);
  s->cb.Reset();
  uv_close(reinterpret_cast<uv_handle_t*>(&s->handle), OnIdleClosed);
}

// ---------------------------------------------------------------------------------------------
// read / write / close

Napi::Value Read(const Napi::CallbackInfo& info) {
  int fd = GetFd(info, 0, "read");
  size_t len;
  uint8_t* p = GetBytes(info, 1, "read", &len);
  ssize_t n;
  do {
    n = ::read(fd, p, len);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return Napi::Number::New(info.Env(), -1);
    ThrowErrno(info.Env(), "read", errno);
  }
  return Napi::Number::New(info.Env(), static_cast<double>(n));
}

Napi::Value Write(const Napi::CallbackInfo& info) {
  int fd = GetFd(info, 0, "write");
  size_t len;
  uint8_t* p = GetBytes(info, 1, "write", &len);
  ssize_t n;
  do {
    n = ::write(fd, p, len);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return Napi::Number::New(info.Env(), -1);
    ThrowErrno(info.Env(), "write", errno);
  }
  return Napi::Number::New(info.Env(), static_cast<double>(n));
}

// dup(fd) -> a new fd (close-on-exec) for the same file: a worker thread gets its own copy of a
// front-end's fd, so the main thread closing or replacing its own never leaves the worker writing
// to a number that now names something else
Napi::Value Dup(const Napi::CallbackInfo& info) {
  int fd = GetFd(info, 0, "dup");
  int r = ::fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (r < 0) ThrowErrno(info.Env(), "dup", errno);
  return Napi::Number::New(info.Env(), r);
}

void Close(const Napi::CallbackInfo& info) {
  int fd = GetFd(info, 0, "close");
  // On Linux the descriptor is released even when close() reports EINTR: never retry.
  if (::close(fd) != 0 && errno != EINTR) ThrowErrno(info.Env(), "close", errno);
}

// ---------------------------------------------------------------------------------------------
// poll: uv_poll_t on the Node event loop
//
// Ownership: PollState holds the uv handle and the callback and is freed only in the uv_close
// callback, so closing from inside the poll callback is safe. The JS Poller object (PollerWrap)
// is kept alive (strong reference) while the handle is started, like Node's own handles; when it
// is stopped and unreachable, its garbage collection closes the handle. At environment teardown
// (process exit, worker termination) a cleanup hook closes every handle still open.

struct PollState {
  uv_poll_t handle;
  napi_env env;
  AddonData* data;
  Napi::FunctionReference cb;
  PollerWrap* wrap = nullptr;
  int fd = -1;
  bool started = false;  // uv_poll_start succeeded and no stop/error since
  bool closing = false;
};

void MarkStarted(PollState* s, bool on) {
  auto& started = s->data->started_by_fd;
  if (on) {
    started[s->fd] = s;
  } else if (s->started) {
    auto it = started.find(s->fd);
    if (it != started.end() && it->second == s) started.erase(it);
  }
  s->started = on;
}

void OnPollClosed(uv_handle_t* h) {
  delete static_cast<PollState*>(h->data);
}

// Stops and closes; the state is freed later by OnPollClosed. Does not touch the wrapper.
void ClosePollState(PollState* s, bool release_callback) {
  if (s->closing) return;
  s->closing = true;
  MarkStarted(s, false);
  s->data->live_polls.erase(s);
  if (release_callback) {
    s->cb.Reset();
  } else {
    s->cb.SuppressDestruct();
  }
  uv_poll_stop(&s->handle);
  uv_close(reinterpret_cast<uv_handle_t*>(&s->handle), OnPollClosed);
}

class PollerWrap : public Napi::ObjectWrap<PollerWrap> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "Poller",
                       {
                           InstanceMethod<&PollerWrap::Start>("start"),
                           InstanceMethod<&PollerWrap::Stop>("stop"),
                           InstanceMethod<&PollerWrap::Close>("close"),
                       });
  }

  // Constructed only by poll(), with a napi External holding a ready PollState.
  explicit PollerWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<PollerWrap>(info) {
    if (!info[0].IsExternal()) ThrowType(info.Env(), "Poller cannot be constructed directly; use poll()");
    state_ = info[0].As<Napi::External<PollState>>().Data();
    state_->wrap = this;
  }

  ~PollerWrap() override {
    if (state_ != nullptr) {
      state_->wrap = nullptr;
      ClosePollState(state_, true);
      state_ = nullptr;
    }
  }

  // Called by the teardown hook: the state is going away without us.
  void Orphan() { state_ = nullptr; }

  // On a libuv error the handle has stopped itself: drop the keep-alive reference.
  void Stopped() { SetActive(false); }

 private:
  void SetActive(bool on) {
    if (on && !active_) {
      Ref();
      active_ = true;
    } else if (!on && active_) {
      Unref();
      active_ = false;
    }
  }

  void Start(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (state_ == nullptr) {
      Napi::Error e = Napi::Error::New(env, "poller.start: the poller is closed");
      e.Value().Set("code", Napi::String::New(env, "ERR_POLLER_CLOSED"));
      throw e;
    }
    int events = static_cast<int>(GetInteger(info, 0, "poller.start", "events", 1, 15));
    // libuv drops events and asserts on stop when two started poll handles share one fd: refuse.
    auto& started = state_->data->started_by_fd;
    auto it = started.find(state_->fd);
    if (it != started.end() && it->second != state_) {
      ThrowErrno(env, "poller.start (another poller is started on this fd)", EEXIST);
    }
    int r = uv_poll_start(&state_->handle, events, OnPoll);
    if (r < 0) ThrowUv(env, "uv_poll_start", r);
    MarkStarted(state_, true);
    SetActive(true);
  }

  void Stop(const Napi::CallbackInfo& /*info*/) {
    if (state_ == nullptr) return;
    uv_poll_stop(&state_->handle);
    MarkStarted(state_, false);
    SetActive(false);
  }

  void Close(const Napi::CallbackInfo& /*info*/) {
    if (state_ == nullptr) return;
    state_->wrap = nullptr;
    ClosePollState(state_, true);
    state_ = nullptr;
    SetActive(false);
  }

  static void OnPoll(uv_poll_t* h, int status, int events) {
    PollState* s = static_cast<PollState*>(h->data);
    if (s->closing || s->cb.IsEmpty()) return;
    Napi::Env env(s->env);
    Napi::HandleScope scope(env);
    Napi::Object recv = env.Global();
    if (status < 0) MarkStarted(s, false);  // libuv stopped the handle
    if (s->wrap != nullptr) {
      recv = s->wrap->Value();
      if (status < 0) s->wrap->Stopped();
    }
    try {
      // MakeCallback: runs process.nextTick queue and microtasks afterwards, like Node's handles.
      s->cb.MakeCallback(recv, {Napi::Number::New(env, status), Napi::Number::New(env, events)});
    } catch (const Napi::Error& e) {
      // No JavaScript is on the stack: report as an uncaught exception.
      napi_fatal_exception(env, e.Value());
    }
    // s may be closing now (close() called from the callback) but is freed only by OnPollClosed.
  }

  PollState* state_ = nullptr;
  bool active_ = false;
};

Napi::Value Poll(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  AddonData* data = env.GetInstanceData<AddonData>();
  int fd = GetFd(info, 0, "poll");
  if (!info[1].IsFunction()) ThrowType(env, "poll: cb must be a function");
  PollState* s = new PollState;
  s->fd = fd;
  s->env = env;
  s->data = data;
  int r = uv_poll_init(data->loop, &s->handle, fd);
  if (r < 0) {
    delete s;
    ThrowUv(env, "uv_poll_init", r);
  }
  s->handle.data = s;
  s->cb = Napi::Persistent(info[1].As<Napi::Function>());
  data->live_polls.insert(s);
  try {
    return data->poller_ctor.New({Napi::External<PollState>::New(env, s)});
  } catch (...) {
    if (s->wrap != nullptr) s->wrap->Orphan();
    ClosePollState(s, true);
    throw;
  }
}

void TeardownPolls(void* arg) {
  AddonData* data = static_cast<AddonData*>(arg);
  data->tearing_down = true;
  while (!data->live_polls.empty()) {
    PollState* s = *data->live_polls.begin();
    if (s->wrap != nullptr) s->wrap->Orphan();
    s->wrap = nullptr;
    ClosePollState(s, true);
  }
  CloseIdle(data);
  // References must be released while the environment still exists.
  for (AddonData::Area& a : data->areas) {
    a.base = nullptr;
    a.len = 0;
    a.keep.Reset();
  }
  data->live_areas = 0;
  data->copy_list = nullptr;
  data->copy_list_len = 0;
  data->copy_list_keep.Reset();
}

// ---------------------------------------------------------------------------------------------
// TAP

Napi::Value OpenTap(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string name = info[0].IsUndefined() ? std::string() : GetString(info, 0, "openTap", "name");
  if (name.size() >= IFNAMSIZ) {
    ThrowRange(env, "openTap: name longer than " + std::to_string(IFNAMSIZ - 1) + " bytes");
  }
  int fd = ::open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) ThrowErrno(env, "open /dev/net/tun", errno);
  ifreq ifr;
  std::memset(&ifr, 0, sizeof ifr);
  ifr.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
  std::memcpy(ifr.ifr_name, name.data(), name.size());
  if (::ioctl(fd, TUNSETIFF, &ifr) != 0) {
    int err = errno;
    ::close(fd);
    ThrowErrno(env, "ioctl TUNSETIFF", err);
  }
  Napi::Object result = Napi::Object::New(env);
  result.Set("fd", Napi::Number::New(env, fd));
  result.Set("name", Napi::String::New(env, ifr.ifr_name, strnlen(ifr.ifr_name, IFNAMSIZ)));
  return result;
}

void TapSetVnetHdrSize(const Napi::CallbackInfo& info) {
  int fd = GetFd(info, 0, "tapSetVnetHdrSize");
  int size = static_cast<int>(GetInteger(info, 1, "tapSetVnetHdrSize", "size", 0, INT_MAX));
  if (::ioctl(fd, TUNSETVNETHDRSZ, &size) != 0) ThrowErrno(info.Env(), "ioctl TUNSETVNETHDRSZ", errno);
}

void TapSetOffload(const Napi::CallbackInfo& info) {
  int fd = GetFd(info, 0, "tapSetOffload");
  unsigned int flags = static_cast<unsigned int>(GetInteger(info, 1, "tapSetOffload", "flags", 0, UINT32_MAX));
  if (::ioctl(fd, TUNSETOFFLOAD, static_cast<unsigned long>(flags)) != 0) {
    ThrowErrno(info.Env(), "ioctl TUNSETOFFLOAD", errno);
  }
}

// ---------------------------------------------------------------------------------------------

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  AddonData* data = new AddonData;
  env.SetInstanceData<AddonData>(data);
  if (napi_get_uv_event_loop(env, &data->loop) != napi_ok || data->loop == nullptr) {
    throw Napi::Error::New(env, "vhost_native: no libuv event loop");
  }
  data->poller_ctor = Napi::Persistent(PollerWrap::Define(env));
  InstallSigbusHandler();
  // Registered after the module's napi_env exists, so it runs before the env is torn down.
  napi_add_env_cleanup_hook(env, TeardownPolls, data);

  exports.Set("mmap", Napi::Function::New<Mmap>(env, "mmap"));
  exports.Set("munmap", Napi::Function::New<Munmap>(env, "munmap"));
  exports.Set("eventfd", Napi::Function::New<EventFd>(env, "eventfd"));
  exports.Set("eventfdRead", Napi::Function::New<EventFdRead>(env, "eventfdRead"));
  exports.Set("eventfdWrite", Napi::Function::New<EventFdWrite>(env, "eventfdWrite"));
  exports.Set("setNonBlocking", Napi::Function::New<SetNonBlocking>(env, "setNonBlocking"));
  exports.Set("sealShrink", Napi::Function::New<SealShrink>(env, "sealShrink"));
  exports.Set("guestFaultWord", Napi::Function::New<GuestFaultWord>(env, "guestFaultWord"));
  exports.Set("mappingFaults", Napi::Function::New<MappingFaults>(env, "mappingFaults"));
  exports.Set("ftruncate", Napi::Function::New<Ftruncate>(env, "ftruncate"));
  exports.Set("memfdCreate", Napi::Function::New<MemfdCreate>(env, "memfdCreate"));
  exports.Set("unixListen", Napi::Function::New<UnixListen>(env, "unixListen"));
  exports.Set("openAt", Napi::Function::New<OpenAt>(env, "openAt"));
  exports.Set("unixAccept", Napi::Function::New<UnixAccept>(env, "unixAccept"));
  exports.Set("unixConnect", Napi::Function::New<UnixConnect>(env, "unixConnect"));
  exports.Set("socketpair", Napi::Function::New<SocketPair>(env, "socketpair"));
  exports.Set("recvmsg", Napi::Function::New<RecvMsg>(env, "recvmsg"));
  exports.Set("sendmsg", Napi::Function::New<SendMsg>(env, "sendmsg"));
  exports.Set("read", Napi::Function::New<Read>(env, "read"));
  exports.Set("write", Napi::Function::New<Write>(env, "write"));
  exports.Set("close", Napi::Function::New<Close>(env, "close"));
  exports.Set("dup", Napi::Function::New<Dup>(env, "dup"));
  exports.Set("copy", Napi::Function::New<Copy>(env, "copy"));
  exports.Set("registerArea", Napi::Function::New<RegisterArea>(env, "registerArea"));
  exports.Set("unregisterArea", Napi::Function::New<UnregisterArea>(env, "unregisterArea"));
  exports.Set("areaLength", Napi::Function::New<AreaLength>(env, "areaLength"));
  exports.Set("setCopyList", Napi::Function::New<SetCopyList>(env, "setCopyList"));
  exports.Set("runCopies", Napi::Function::New<RunCopies>(env, "runCopies"));
  exports.Set("clockWord", Napi::Function::New<ClockWord>(env, "clockWord"));
  exports.Set("clockRead", Napi::Function::New<ClockRead>(env, "clockRead"));
  exports.Set("setIdle", Napi::Function::New<SetIdle>(env, "setIdle"));
  exports.Set("idleStart", Napi::Function::New<IdleStart>(env, "idleStart"));
  exports.Set("idleStop", Napi::Function::New<IdleStop>(env, "idleStop"));
  exports.Set("poll", Napi::Function::New<Poll>(env, "poll"));
  exports.Set("openTap", Napi::Function::New<OpenTap>(env, "openTap"));
  exports.Set("tapSetVnetHdrSize", Napi::Function::New<TapSetVnetHdrSize>(env, "tapSetVnetHdrSize"));
  exports.Set("tapSetOffload", Napi::Function::New<TapSetOffload>(env, "tapSetOffload"));
  exports.Set("POLL_READABLE", Napi::Number::New(env, UV_READABLE));
  exports.Set("POLL_WRITABLE", Napi::Number::New(env, UV_WRITABLE));
  exports.Set("MAX_WINDOW", Napi::Number::New(env, static_cast<double>(kMaxWindow)));
  return exports;
}

}  // namespace

NODE_API_MODULE(vhost_native, Init)
