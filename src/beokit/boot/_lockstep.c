/*
 * beo boot's TFTP hot path, compiled (optional: the pure Python path in
 * tftp_server.py / tftp.py does the same where this module was not built).
 *
 * Nearly every datagram a busy TFTP server reads is a lock-step client's ACK
 * of the block it was sent last (every PXE ROM, curl, tftp-hpa).  For each
 * such ACK the server moves one transfer on by one block and queues one DATA
 * datagram for sendmmsg(2): a few integer stores.  In Python that is ~0.6 us
 * per datagram, most of the server's user time; here it is a small fraction.
 *
 *   State   the base class of tftp.Transfer: the fields step() touches, as C
 *           members (Python reads and writes them like any slot).
 *   acks()  runs Transfer.step() and the queueing of TftpServer.on_transfers
 *           over a recvmmsg batch while each datagram is such an ACK, and
 *           returns where it stopped; Python handles that datagram (anything
 *           else: a window, a retransmission, the last block, a stray, a
 *           full queue) and calls again.
 *
 * The memory layouts are those tftp_socket.TransferSocket sets up (on
 * beokit.udp.UdpBatch, which checks them; SLOT is checked in tftp_server):
 * mmsghdr is 64 bytes with msg_len at byte 56; a received slot is the
 * sender's sockaddr_in (16 bytes) and the payload; a queued message has two
 * iovecs (16 bytes each): the DATA header and the block.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>
#include <endian.h>

typedef struct {
    PyObject_HEAD
    long long next;          /* next block to send */
    long long acked;         /* highest block acknowledged (0: the OACK, -1: none) */
    long long expect;        /* wire number of the lock-step ACK step() answers, or -1 */
    long long nblocks;
    long long blksize;
    long long packets_sent;
    long long bytes_sent;
    double timeout;
    double last_progress;
    double deadline;
} State;

static PyMemberDef State_members[] = {
    {"next", T_LONGLONG, offsetof(State, next), 0, NULL},
    {"acked", T_LONGLONG, offsetof(State, acked), 0, NULL},
    {"expect", T_LONGLONG, offsetof(State, expect), 0, NULL},
    {"nblocks", T_LONGLONG, offsetof(State, nblocks), 0, NULL},
    {"blksize", T_LONGLONG, offsetof(State, blksize), 0, NULL},
    {"packets_sent", T_LONGLONG, offsetof(State, packets_sent), 0, NULL},
    {"bytes_sent", T_LONGLONG, offsetof(State, bytes_sent), 0, NULL},
    {"timeout", T_DOUBLE, offsetof(State, timeout), 0, NULL},
    {"last_progress", T_DOUBLE, offsetof(State, last_progress), 0, NULL},
    {"deadline", T_DOUBLE, offsetof(State, deadline), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject StateType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "beokit.boot._lockstep.State",
    .tp_doc = "The fields of a TFTP transfer that the lock-step path moves on.",
    .tp_basicsize = sizeof(State),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_new = PyType_GenericNew,
    .tp_members = State_members,
};

#define SLOT (16 + 528)
#define MMSGHDR 64
#define MSG_LEN_AT 56
#define OP_ACK 4

static PyObject *str_xfer, *str_base, *str_name_addr;

/* An int attribute of a session as an address; 0 on error (an exception set) or 0. */
static uintptr_t addr_attr(PyObject *obj, PyObject *name)
{
    PyObject *v = PyObject_GetAttr(obj, name);
    if (v == NULL)
        return 0;
    uintptr_t a = (uintptr_t)PyLong_AsUnsignedLongLong(v);
    Py_DECREF(v);
    if (a == (uintptr_t)-1 && PyErr_Occurred())
        return 0;
    return a;
}

static int writable(PyObject *obj, Py_buffer *view, Py_ssize_t need, const char *what)
{
    if (PyObject_GetBuffer(obj, view, PyBUF_WRITABLE) < 0)
        return -1;
    if (view->len < need) {
        PyErr_Format(PyExc_ValueError, "%s: %zd bytes, need %zd", what, view->len, need);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

PyDoc_STRVAR(acks_doc,
"acks(slots, rhdr, shdr, siov, i, n, j, batch, sessions, parked, headers, keep, now)\n"
"-> (i, j)\n\n"
"Answer received datagrams i, i+1, ... (of n) while each is the lock-step ACK\n"
"its transfer expects: step the transfer (Transfer.step) and queue its next\n"
"block as message j, j+1, ... (of batch) of the sendmmsg arrays, appending\n"
"its session to keep.  Stops at the first datagram that is anything else (or\n"
"a full queue) and returns where it stopped: the datagram and the message.\n"
"sessions maps a peer key to a session (attributes xfer, base, name_addr);\n"
"headers is the address of the DATA header table (4 bytes per block number).");

static PyObject *acks(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    (void)mod;
    if (nargs != 13) {
        PyErr_SetString(PyExc_TypeError, "acks() takes 13 arguments");
        return NULL;
    }
    Py_ssize_t i = PyLong_AsSsize_t(args[4]);
    Py_ssize_t n = PyLong_AsSsize_t(args[5]);
    Py_ssize_t j = PyLong_AsSsize_t(args[6]);
    Py_ssize_t batch = PyLong_AsSsize_t(args[7]);
    PyObject *sessions = args[8], *parked = args[9], *keep = args[11];
    uintptr_t headers = (uintptr_t)PyLong_AsUnsignedLongLong(args[10]);
    double now = PyFloat_AsDouble(args[12]);
    if (PyErr_Occurred())
        return NULL;
    if (!PyDict_Check(sessions) || !PyAnySet_Check(parked) || !PyList_Check(keep)) {
        PyErr_SetString(PyExc_TypeError, "acks(): sessions a dict, parked a set, keep a list");
        return NULL;
    }
    if (i < 0 || n < i || j < 0 || batch < j) {
        PyErr_SetString(PyExc_ValueError, "acks(): need 0 <= i <= n and 0 <= j <= batch");
        return NULL;
    }
    Py_buffer vs, vr, vq, vi;
    if (writable(args[0], &vs, SLOT * n, "slots") < 0)
        return NULL;
    if (writable(args[1], &vr, MMSGHDR * n, "rhdr") < 0) {
        PyBuffer_Release(&vs);
        return NULL;
    }
    if (writable(args[2], &vq, MMSGHDR * batch, "shdr") < 0) {
        PyBuffer_Release(&vs);
        PyBuffer_Release(&vr);
        return NULL;
    }
    if (writable(args[3], &vi, 32 * batch, "siov") < 0) {
        PyBuffer_Release(&vs);
        PyBuffer_Release(&vr);
        PyBuffer_Release(&vq);
        return NULL;
    }
    const unsigned char *slots = vs.buf, *rhdr = vr.buf;
    unsigned char *shdr = vq.buf, *siov = vi.buf;
    int check_parked = PySet_GET_SIZE(parked) > 0;
    int failed = 0;

    for (; i < n && j < batch; i++) {
        const unsigned char *s = slots + (size_t)SLOT * i;
        uint32_t len;
        memcpy(&len, rhdr + (size_t)MMSGHDR * i + MSG_LEN_AT, 4);
        if (len != 4 || s[16] != 0 || s[17] != OP_ACK)
            break;
        long long block = (s[18] << 8) | s[19];
        uint64_t key;
        memcpy(&key, s, 8);
        PyObject *k = PyLong_FromUnsignedLongLong(be64toh(key));
        if (k == NULL) {
            failed = 1;
            break;
        }
        PyObject *ss = PyDict_GetItemWithError(sessions, k); /* borrowed */
        int stop = ss == NULL;
        if (!stop && check_parked) {
            int c = PySet_Contains(parked, k);
            if (c < 0)
                failed = 1;
            stop = c != 0;
        }
        Py_DECREF(k);
        if (stop) {
            failed = failed || PyErr_Occurred() != NULL;
            break;
        }
        PyObject *xo = PyObject_GetAttr(ss, str_xfer);
        if (xo == NULL) {
            failed = 1;
            break;
        }
        if (!PyObject_TypeCheck(xo, &StateType) || ((State *)xo)->expect != block) {
            Py_DECREF(xo);
            break;
        }
        State *x = (State *)xo;
        uintptr_t base = addr_attr(ss, str_base);
        uintptr_t name = base ? addr_attr(ss, str_name_addr) : 0;
        if (!base || !name) {
            Py_DECREF(xo);
            failed = PyErr_Occurred() != NULL;
            break;
        }
        if (PyList_Append(keep, ss) < 0) {
            Py_DECREF(xo);
            failed = 1;
            break;
        }
        /* Transfer.step(now) */
        long long b = x->next;
        x->acked = b - 1;
        x->next = b + 1;
        x->expect = b + 1 < x->nblocks ? (b & 0xFFFF) : -1;
        x->last_progress = now;
        x->deadline = now + x->timeout;
        x->packets_sent += 1;
        x->bytes_sent += x->blksize + 4;
        /* message j: to the peer, header + block */
        uint64_t w;
        w = (uint64_t)name;
        memcpy(shdr + (size_t)MMSGHDR * j, &w, 8);
        unsigned char *iov = siov + (size_t)32 * j;
        w = (uint64_t)(headers + ((b & 0xFFFF) << 2));
        memcpy(iov, &w, 8);
        w = 4;
        memcpy(iov + 8, &w, 8);
        w = (uint64_t)(base + (uintptr_t)((b - 1) * x->blksize));
        memcpy(iov + 16, &w, 8);
        w = (uint64_t)x->blksize;
        memcpy(iov + 24, &w, 8);
        Py_DECREF(xo);
        j++;
    }
    PyBuffer_Release(&vs);
    PyBuffer_Release(&vr);
    PyBuffer_Release(&vq);
    PyBuffer_Release(&vi);
    if (failed)
        return NULL;
    return Py_BuildValue("(nn)", i, j);
}

static PyMethodDef methods[] = {
    {"acks", (PyCFunction)(void (*)(void))acks, METH_FASTCALL, acks_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "beokit.boot._lockstep",
    .m_doc = "beo boot's TFTP lock-step hot path, compiled (optional).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__lockstep(void)
{
    if (PyType_Ready(&StateType) < 0)
        return NULL;
    str_xfer = PyUnicode_InternFromString("xfer");
    str_base = PyUnicode_InternFromString("base");
    str_name_addr = PyUnicode_InternFromString("name_addr");
    if (!str_xfer || !str_base || !str_name_addr)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&StateType);
    if (PyModule_AddObject(m, "State", (PyObject *)&StateType) < 0) {
        Py_DECREF(&StateType);
        Py_DECREF(m);
        return NULL;
    }
    if (PyModule_AddIntConstant(m, "SLOT", SLOT) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
