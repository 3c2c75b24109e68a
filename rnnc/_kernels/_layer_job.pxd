# The job descriptions of the one-thread layer kernels (rnnc/_kernels/_layer_job.pyx).

cdef class _Described:
    pass


cdef class LayerForward(_Described):
    cdef public object x, batch_sizes, offsets, w_ih, w_hh, b_ih, b_hh, w_hr, h, c, out
    cdef public object xg, hbuf, hg, rh, h_prev, c_prev, hn_keep
    cdef public object w_hh_packed, w_hn_packed, w_hr_packed, w_ih_packed
    cdef public object w_p, cell_spec, keep
    cdef public bint reverse, reset_after, relu, ih_per_panel
    cdef public Py_ssize_t col0, chunk_steps


cdef class LayerBackward(_Described):
    cdef public object x, xh, batch_sizes, offsets, w_ih, w_hh, w_hr, act, h_prev, c_prev, hn
    cdef public object dout, dh, dc, dx, dw_ih, dw_hh, db_ih, db_hh, dw_hr
    cdef public object dhh, hbuf_all, dhp_all, tc_row, db_acc, work, dw_cat
    cdef public object w_hh_packed, w_hn_packed, w_hr_packed, w_ih_packed
    cdef public object w_p, dw_p, cell_spec, keep
    cdef public bint reverse, reset_after, relu, add_dx
    cdef public Py_ssize_t col0


cdef inline bint is_double(object array):
    return array.dtype.char == 'd'


cdef inline int check_chunk_steps(LayerForward job, str name) except -1:
    if job.chunk_steps < 1:
        raise ValueError(f"{name}: chunk_steps must be >= 1, got {job.chunk_steps}")
    return 0
