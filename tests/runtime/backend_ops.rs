//! The CPU backend's Coarse2Fine ops (BAP, center loss, transposed conv, axpby, and the fine
//! branch's ReLU, map choice, resize and mask) and WS-DAN's augmentation ops are the kernels crate's CPU references behind
//! the `Backend` interface: each wrapper must hand every operand to the right place. Each is checked against a direct call of its reference on the same
//! random inputs, with the operands carved out of one shared buffer.

use c2f_inception::backend::{prelude::*, Tensor};
use c2f_inception::cpu::CpuBackend;
use c2f_kernels::augment::{self, AugmentShape};
use c2f_kernels::bap::{self, BapShape};
use c2f_kernels::center_loss::{self, CenterLossParams, CenterLossShape};
use c2f_kernels::conv_transpose::{self, ConvTransposeParams};
use c2f_kernels::map_select::{self, MapShape};
use c2f_kernels::mask::{self, MaskShape};
use c2f_kernels::relu;
use c2f_kernels::resize::{self, ResizeShape};
use c2f_kernels::testing::SplitMix64;

/// Random tensors carved out of one buffer of a CPU backend, at odd offsets.
struct Arena {
    cpu: CpuBackend<f64>,
    whole: Tensor,
    used: usize,
    rng: SplitMix64,
}

impl Arena {
    fn new() -> Arena {
        let mut cpu = CpuBackend::new();
        let whole = cpu.alloc(1 << 16).unwrap();
        Arena {
            cpu,
            whole,
            used: 0,
            rng: SplitMix64(17),
        }
    }

    fn random(&mut self, len: usize, lo: f64, hi: f64) -> (Tensor, Vec<f64>) {
        let t = self.whole.slice(self.used + 3, len);
        self.used += len + 3;
        let v = self.rng.uniform_vec(len, lo, hi);
        self.cpu.write(t, &v).unwrap();
        (t, v)
    }

    fn read(&mut self, t: Tensor) -> Vec<f64> {
        self.cpu.read(t).unwrap()
    }
}

#[test]
fn axpby_wrapper() {
    let mut a = Arena::new();
    let (x, xv) = a.random(50, -1.0, 1.0);
    let (y, mut yv) = a.random(50, -1.0, 1.0);
    a.cpu.axpby(3.0, x, -0.5, y).unwrap();
    c2f_kernels::axpby::axpby_cpu(3.0, &xv, -0.5, &mut yv).unwrap();
    assert_eq!(a.read(y), yv);
}

#[test]
fn bap_wrappers() {
    let s = BapShape {
        batch: 2,
        maps: 3,
        channels: 5,
        height: 3,
        width: 4,
    };
    let mut a = Arena::new();
    let (att, attv) = a.random(s.attention_len(), 0.0, 1.0);
    let (feat, featv) = a.random(s.features_len(), -1.0, 1.0);
    let (parts, _) = a.random(s.parts_len(), -1.0, 1.0);
    let (norms, _) = a.random(s.batch, -1.0, 1.0);
    a.cpu.bap_forward(&s, att, feat, parts, norms).unwrap();
    let (mut pv, mut nv) = (vec![0.0; s.parts_len()], vec![0.0; s.batch]);
    bap::forward_cpu(&s, [&attv, &featv], &mut pv, &mut nv).unwrap();
    assert_eq!(a.read(parts), pv);
    assert_eq!(a.read(norms), nv);

    let (dparts, dpv) = a.random(s.parts_len(), -1.0, 1.0);
    let (datt, _) = a.random(s.attention_len(), -1.0, 1.0);
    let (dfeat, _) = a.random(s.features_len(), -1.0, 1.0);
    a.cpu
        .bap_backward(&s, att, feat, parts, norms, dparts, datt, dfeat)
        .unwrap();
    let (mut dav, mut dfv) = (vec![0.0; s.attention_len()], vec![0.0; s.features_len()]);
    bap::backward_cpu(&s, [&attv, &featv], (&pv, &nv), &dpv, [&mut dav, &mut dfv]).unwrap();
    assert_eq!(a.read(datt), dav);
    assert_eq!(a.read(dfeat), dfv);
}

#[test]
fn center_loss_wrapper() {
    let s = CenterLossShape {
        batch: 4,
        dim: 7,
        classes: 3,
    };
    let p = CenterLossParams {
        lambda: 0.7,
        beta: 0.05,
        ..CenterLossParams::default()
    };
    let mut a = Arena::new();
    let (f, fv) = a.random(s.features_len(), -1.0, 1.0);
    let (c, mut cv) = a.random(s.centers_len(), -1.0, 1.0);
    let (df, _) = a.random(s.features_len(), -1.0, 1.0);
    let labels = a.cpu.alloc_index(s.batch).unwrap();
    let lv = [2, 0, 2, 1];
    a.cpu.write_index(labels, &lv).unwrap();
    let (loss, _) = a.random(1, 1e3, 2e3);
    let scales = a.cpu.alloc(2).unwrap();
    a.cpu.write(scales, &p.scales(s.batch)).unwrap();
    a.cpu
        .center_loss(&s, &p.update(), scales, f, labels, c, df, loss)
        .unwrap();
    let mut dfv = vec![0.0; s.features_len()];
    let expected = center_loss::forward_update_cpu(&s, &p, &fv, &lv, &mut cv, &mut dfv).unwrap();
    assert_eq!(a.read(loss), [expected]);
    assert_eq!(a.read(c), cv);
    assert_eq!(a.read(df), dfv);
}

#[test]
fn conv_transpose_wrappers() {
    let p = ConvTransposeParams {
        batch: 2,
        in_channels: 3,
        out_channels: 2,
        height: 4,
        width: 5,
        kernel_size: 4,
        stride: 2,
        padding: 1,
        output_padding: 0,
    };
    let mut a = Arena::new();
    let (x, xv) = a.random(p.input_len(), -1.0, 1.0);
    let (w, wv) = a.random(p.weight_len(), -1.0, 1.0);
    let (b, bv) = a.random(p.out_channels, -1.0, 1.0);
    let (y, _) = a.random(p.output_len(), -1.0, 1.0);
    a.cpu.conv_transpose_forward(&p, x, w, b, y).unwrap();
    let mut yv = vec![0.0; p.output_len()];
    conv_transpose::forward_cpu(&p, &xv, [&wv, &bv], &mut yv).unwrap();
    assert_eq!(a.read(y), yv);

    let (dy, dyv) = a.random(p.output_len(), -1.0, 1.0);
    let (dx, _) = a.random(p.input_len(), -1.0, 1.0);
    let (dw, mut dwv) = a.random(p.weight_len(), -1.0, 1.0);
    let (db, mut dbv) = a.random(p.out_channels, -1.0, 1.0);
    a.cpu
        .conv_transpose_backward(&p, x, w, dy, dx, dw, db)
        .unwrap();
    let mut dxv = vec![0.0; p.input_len()];
    conv_transpose::backward_cpu(&p, [&xv, &dyv], &wv, &mut dxv, [&mut dwv, &mut dbv]).unwrap();
    assert_eq!(a.read(dx), dxv);
    assert_eq!(a.read(dw), dwv);
    assert_eq!(a.read(db), dbv);
}

#[test]
fn fine_branch_wrappers() {
    let mut a = Arena::new();
    // ReLU.
    let (x, xv) = a.random(40, -1.0, 1.0);
    let (y, _) = a.random(40, -1.0, 1.0);
    a.cpu.relu_forward(x, y).unwrap();
    let mut yv = vec![0.0; 40];
    relu::relu_forward_cpu(&xv, &mut yv).unwrap();
    assert_eq!(a.read(y), yv);
    let (dy, dyv) = a.random(40, -1.0, 1.0);
    let (dx, _) = a.random(40, -1.0, 1.0);
    a.cpu.relu_backward(y, dy, dx).unwrap();
    let mut dxv = vec![0.0; 40];
    relu::relu_backward_cpu(&yv, &dyv, &mut dxv).unwrap();
    assert_eq!(a.read(dx), dxv);

    // Map choice, with accumulation into an existing gradient.
    let ms = MapShape {
        batch: 3,
        maps: 4,
        height: 2,
        width: 5,
    };
    let (maps, mapsv) = a.random(ms.maps_len(), 0.0, 1.0);
    let (chosen, _) = a.random(ms.map_len(), -1.0, 1.0);
    let idx = a.cpu.alloc_index(3).unwrap();
    a.cpu.write_index(idx, &[3, 0, 2]).unwrap();
    a.cpu.select_map_forward(&ms, maps, idx, chosen).unwrap();
    let mut chosenv = vec![0.0; ms.map_len()];
    map_select::select_map_forward_cpu(&ms, &mapsv, &[3, 0, 2], &mut chosenv).unwrap();
    assert_eq!(a.read(chosen), chosenv);
    let (dmaps, mut dmapsv) = a.random(ms.maps_len(), -1.0, 1.0);
    a.cpu
        .select_map_backward(&ms, idx, chosen, dmaps, true)
        .unwrap();
    map_select::select_map_backward_cpu(&ms, &[3, 0, 2], &chosenv, &mut dmapsv, true).unwrap();
    assert_eq!(a.read(dmaps), dmapsv);
    a.cpu.mean_maps_forward(&ms, maps, chosen).unwrap();
    map_select::mean_maps_forward_cpu(&ms, &mapsv, &mut chosenv).unwrap();
    assert_eq!(a.read(chosen), chosenv);

    // Resize 2×5 → 7×6 and back.
    let rs = ResizeShape {
        batch: 3,
        channels: 1,
        in_height: 2,
        in_width: 5,
        out_height: 7,
        out_width: 6,
    };
    let (big, _) = a.random(rs.out_len(), -1.0, 1.0);
    a.cpu.resize_bilinear_forward(&rs, chosen, big).unwrap();
    let mut bigv = vec![0.0; rs.out_len()];
    resize::resize_bilinear_forward_cpu(&rs, &chosenv, &mut bigv).unwrap();
    assert_eq!(a.read(big), bigv);
    let (dsmall, _) = a.random(rs.in_len(), -1.0, 1.0);
    a.cpu.resize_bilinear_backward(&rs, big, dsmall).unwrap();
    let mut dsmallv = vec![0.0; rs.in_len()];
    resize::resize_bilinear_backward_cpu(&rs, &bigv, &mut dsmallv).unwrap();
    assert_eq!(a.read(dsmall), dsmallv);

    // Mask the image with the resized map.
    let ks = MaskShape {
        batch: 3,
        channels: 3,
        height: 7,
        width: 6,
    };
    let (image, imagev) = a.random(ks.image_len(), -1.0, 1.0);
    let (masked, _) = a.random(ks.image_len(), -1.0, 1.0);
    let (u_max, _) = a.random(3, -1.0, 1.0);
    let argmax = a.cpu.alloc_index(3).unwrap();
    a.cpu
        .mask_forward(&ks, big, image, masked, u_max, argmax)
        .unwrap();
    let (mut maskedv, mut u_maxv, mut argmaxv) =
        (vec![0.0; ks.image_len()], vec![0.0; 3], vec![0; 3]);
    mask::mask_forward_cpu(&ks, &bigv, &imagev, &mut maskedv, &mut u_maxv, &mut argmaxv).unwrap();
    assert_eq!(a.read(masked), maskedv);
    assert_eq!(a.read(u_max), u_maxv);
    assert_eq!(a.cpu.read_index(argmax).unwrap(), argmaxv);
    let (dmasked, dmaskedv) = a.random(ks.image_len(), -1.0, 1.0);
    let (du, _) = a.random(ks.map_len(), -1.0, 1.0);
    a.cpu
        .mask_backward(&ks, big, image, dmasked, u_max, argmax, du)
        .unwrap();
    let mut duv = vec![0.0; ks.map_len()];
    mask::mask_backward_cpu(
        &ks, &bigv, &imagev, &dmaskedv, &u_maxv, &argmaxv, &mut duv, None,
    )
    .unwrap();
    assert_eq!(a.read(du), duv);
}

#[test]
fn augment_wrappers() {
    let mut a = Arena::new();
    let s = AugmentShape {
        batch: 3,
        channels: 2,
        height: 9,
        width: 7,
        map_height: 4,
        map_width: 3,
    };
    let (maps, mapsv) = a.random(s.map_len(), 0.0, 1.0);
    let (thresholds, thresholdsv) = a.random(3, 0.3, 0.6);
    let boxes = a.cpu.alloc_index(12).unwrap();
    a.cpu
        .attention_boxes(&s, 0.1, maps, thresholds, boxes)
        .unwrap();
    let mut boxesv = vec![0; 12];
    augment::attention_boxes_cpu(&s, 0.1, &mapsv, &thresholdsv, &mut boxesv).unwrap();
    assert_eq!(a.cpu.read_index(boxes).unwrap(), boxesv);
    assert_ne!(
        boxesv,
        [0, 0, 9, 7].repeat(3),
        "every box is the whole image"
    );

    let (x, xv) = a.random(s.image_len(), -1.0, 1.0);
    let (y, _) = a.random(s.image_len(), -1.0, 1.0);
    a.cpu.crop_resize(&s, x, boxes, y).unwrap();
    let mut yv = vec![0.0; s.image_len()];
    augment::crop_resize_cpu(&s, &xv, &boxesv, &mut yv).unwrap();
    assert_eq!(a.read(y), yv);
    a.cpu.drop_mask(&s, maps, thresholds, x, y).unwrap();
    augment::drop_mask_cpu(&s, &mapsv, &thresholdsv, &xv, &mut yv).unwrap();
    assert_eq!(a.read(y), yv);
    // The output may not overlap the image.
    let overlapping = Tensor {
        offset: x.offset + 1,
        ..x
    };
    let e = a.cpu.crop_resize(&s, x, boxes, overlapping).unwrap_err();
    assert!(e.to_string().contains("overlaps"), "{e}");
    let e = a.cpu.drop_mask(&s, maps, thresholds, x, x).unwrap_err();
    assert!(e.to_string().contains("overlaps"), "{e}");

    let ms = MapShape {
        batch: 3,
        maps: 5,
        height: 2,
        width: 3,
    };
    let (all, allv) = a.random(ms.maps_len(), 0.0, 1.0);
    let (draws, drawsv) = a.random(3, 0.0, 1.0);
    let picks = a.cpu.alloc_index(3).unwrap();
    a.cpu.maps_by_mass(&ms, all, draws, picks).unwrap();
    let mut picksv = vec![-1; 3];
    augment::maps_by_mass_cpu(&ms, &allv, &drawsv, &mut picksv).unwrap();
    assert_eq!(a.cpu.read_index(picks).unwrap(), picksv);
}
